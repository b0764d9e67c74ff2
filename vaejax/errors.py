"""The one error type a user can cause; the CLI turns it into one line and exit code 2."""


class VaejaxError(Exception):
    """A problem with the user's input (flags, data files, work directory, checkpoint)."""
