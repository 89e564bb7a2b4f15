"""Scoring with lm-eval, in-process, and the evaluation options."""
