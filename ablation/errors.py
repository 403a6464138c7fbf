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


def validation_line(e, where: str = "", why=None, allowed: Iterable[str] = (),
                    spell=str, what: str = "key") -> str:
    """A pydantic ValidationError as the one line a user reads (the recipe's fields, a
    study file's tables, a job's config: one rule for all): `where` (the table), the key
    as `spell` writes it, and what is wrong. `why(key, err)` may say what is wrong with
    a key in its own words (a predicate such as "must be ...", or a sentence starting
    "needs" or "["); `allowed` lists the keys for an unknown one."""
    err = e.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    key = loc[0] if loc else "?"
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument") and len(loc) == 1:
        allowed = sorted(allowed)
        return (f"{where}unknown {what} {key!r}"
                + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
    text = why(key, err) if why is not None else None
    if text:
        return f"{where}{text}" if text.startswith(("[", "needs")) else \
            f"{where}{spell(key)} {text}"
    if err["type"] == "missing":
        return f"{where}needs {spell(key)}"
    if err["type"] == "literal_error":
        known = str(err.get("ctx", {}).get("expected", "")).replace("'", "")
        return f"{where}unknown {spell(key)} {err.get('input')!r} (known: {known})"
    if err["type"] == "value_error":
        return f"{where}{spell(key)} {err.get('ctx', {}).get('error') or err['msg']}"
    msg = err["msg"]
    return f"{where}{spell(key)}: {msg[:1].lower()}{msg[1:]}, got {err.get('input')!r}"
