"""The error type of bad command-line input."""


class UsageError(Exception):
    """Bad command-line input (option, config key or path); ``main`` reports it as one line and exits with 2."""
