"""A session: plan (frozen, validated before training), one cell as a function of the plan and a cache, the
runner loop with its resume, shard and time-budget policies, the standalone latency session, and the
artifacts cells keep (``artifacts``: what made each, ``load_artifact``; ``export``: folders transformers loads)."""
