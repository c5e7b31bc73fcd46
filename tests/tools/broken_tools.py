"""A tool module whose import fails, for the ConfigError test of load_module."""

raise RuntimeError("this module is broken on purpose")
