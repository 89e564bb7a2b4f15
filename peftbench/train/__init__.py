"""The training loop every method shares: loop (train), batching, loss, plan, compiling, optim, config."""
