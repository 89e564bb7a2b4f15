"""Reading result folders: statistics, leaderboards, latency and merge tables, exports, the folklore claims
and Pareto plots. Torch-free."""
