"""The one exception type the CLI turns into ``error: ...`` and a non-zero exit (no traceback)."""


class AmazonmineError(Exception):
    """A problem with the user's input, config or environment, described in one line."""
