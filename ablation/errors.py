"""One exception type for everything a user can get wrong.

The CLI prints an AblationError as a single line and exits non-zero; anything else
is a bug and is reported as such.
"""

import difflib
from collections.abc import Iterable


class AblationError(Exception):
    """A user-facing problem: bad input, missing data, damaged files, a full disk."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 4) -> str:
    """"; did you mean a, b?" for the choices close to a mistyped `word`, else "": the
    hint every unknown-name line carries (variants, recipe keys, [tune] keys)."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
