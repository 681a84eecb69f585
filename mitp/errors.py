"""Error types whose message is meant for the user (the entry points print them without a traceback)."""


class UserError(Exception):
    """A problem the user can fix: bad config, missing data, stale cache, failed download."""


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the key."""
