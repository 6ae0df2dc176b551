"""Errors users see as one clear line (the CLI prints them without a traceback)."""


class HybridError(Exception):
    """A user-facing error: bad input, bad configuration, a missing file. Printed as one line."""


class ConfigError(HybridError):
    """A configuration key is unknown, mistyped or out of range. The message names the key."""
