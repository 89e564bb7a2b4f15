"""A session: plan (frozen, validated before training), one cell as a function of the plan and a cache, the
runner loop with its resume, shard and time-budget policies, and the standalone latency session."""
