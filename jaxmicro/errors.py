"""Exceptions that carry a message meant for a materials scientist, not a traceback."""


class JaxmicroError(Exception):
    """Base class: the command line prints the message and exits non-zero without a traceback."""


class InputError(JaxmicroError, ValueError):
    """An input (image, shape, option) that cannot be used as given; the message says how to fix it."""


class WeightsError(JaxmicroError):
    """Network weights missing, truncated or tampered with; the message names the command that fixes it."""
