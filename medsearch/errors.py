"""The one exception type the library raises for bad input; the CLI turns it into a one-line error."""


class MedsearchError(Exception):
    """Something the user can fix: the message says what was wrong and what to do."""
