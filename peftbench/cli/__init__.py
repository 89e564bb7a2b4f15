"""The command line, the top layer: thin click commands over the library."""
