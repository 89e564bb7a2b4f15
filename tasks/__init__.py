"""Task definitions that ship with peftbench (each sub-folder holds a task.yaml)."""
