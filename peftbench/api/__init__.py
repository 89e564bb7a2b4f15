"""The plugin API, the bottom layer: hook specifications, the Method base class, option dataclasses, the
records hooks pass, the method registry and the plugin manager."""
