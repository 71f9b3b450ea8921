"""The one exception type for bad user input.

Anything a user can fix (a missing file, a malformed row, a checkpoint that does not fit) raises
`StiltsError` with a one-line message; the command-line entry points print it and exit with
status 2 instead of showing a traceback.
"""


class StiltsError(Exception):
    """A problem with the user's input, reported as one line on stderr (exit status 2)."""
