"""The one exception type the CLI turns into ``error: ...`` and a non-zero exit (no traceback), and the helper
that keeps the values quoted in its messages short."""


class AmazonmineError(Exception):
    """A problem with the user's input, config or environment, described in one line."""


# A quoted value (a name, a cell, an address) longer than this is cut: a message is one line a person reads,
# and a 50 MB image name in it would be neither.
QUOTE_LIMIT = 80


def shorten(text: object, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as a string of at most ``limit`` characters: a longer one keeps its start and end around
    '...', and says how long it was, so two long values that differ at the end still read apart."""
    text = str(text)
    if len(text) <= limit:
        return text
    note = f"...({len(text)} characters)..."
    keep = max(limit - len(note), 2)
    head = (keep + 1) // 2
    return text[:head] + note + text[len(text) - (keep - head):]
