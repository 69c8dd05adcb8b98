"""The one exception type users see: a one-line message, exit code 2."""


class SitegenError(Exception):
    """Bad input or environment. ``str(err)`` is a complete one-line message
    naming the file/key and what is wrong; the CLI prints it without a traceback."""
