"""Errors that reach the user as one clear line (the CLI prints them and exits non-zero, no traceback)."""


class DcoordError(Exception):
    """Base class: the message is the whole story for the user."""

    exit_code = 1


class ConfigError(DcoordError):
    """A job config or CLI value that is not allowed; names the field and what is allowed."""

    exit_code = 2


class RunFailed(DcoordError):
    """A run that cannot go on (too many workers lost, a round past its deadline)."""

    exit_code = 3
