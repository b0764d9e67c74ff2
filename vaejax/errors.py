"""The project's own error type; the CLI turns it into one line and its exit code."""


class VaejaxError(Exception):
    """A problem a user can cause or must know of (flags, data files, work directory, checkpoint)."""

    exit_code = 2


class TrainingInterrupted(VaejaxError):
    """SIGINT or SIGTERM stopped training after a step; a checkpoint was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for death by signal
