"""The machine: atomic file writes, peak memory and other processes' use, versions and provenance, progress
display."""
