"""The inference-latency harness: a grid of shapes x modes x regimes, timed round-robin, with overhead
ratios and their intervals."""
