"""One exception type for everything a user can get wrong.

The CLI prints an AblationError as a single line and exits non-zero; anything else
is a bug and is reported as such.
"""


class AblationError(Exception):
    """A user-facing problem: bad input, missing data, damaged files, a full disk."""
