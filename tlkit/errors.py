"""The one exception type users see: a one-line message that names the problem and the fix."""


class TlkitError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class RunInterrupted(TlkitError):
    """Ctrl-C during training: the last finished epoch is checkpointed; the message says how to resume."""

    exit_code = 130
