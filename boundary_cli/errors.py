"""The one exception type that reaches the user as a single line instead of a traceback."""


class BoundaryError(Exception):
    """A problem with the user's input (config, files, checkpoint, data) that they can fix.

    The CLI prints ``error: <message>`` and exits with status 2; nothing else is written.
    Messages say what was wrong and what to do about it.
    """
