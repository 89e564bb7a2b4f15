"""peftbench's built-in method plugins. They use only the public API (``peftbench.Method`` and the
hooks), exactly as a third-party package would."""
