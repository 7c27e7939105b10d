"""User-facing errors: a message that says what is wrong, where, and how to fix it."""


class PipelineError(Exception):
    """A mistake in the user's input or set-up (not a bug).

    Entry points print the message without a traceback and exit with status 2.
    """

    exit_code = 2
