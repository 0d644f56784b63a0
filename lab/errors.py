"""The one exception type the CLI turns into a one-line error."""


class LabError(Exception):
    """A problem the user can fix; str(err) is the whole message, one line each."""
