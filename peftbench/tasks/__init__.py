"""Tasks: the task files, their data (local files or the hub), validation and the lm-eval task YAMLs
materialized for a session."""
