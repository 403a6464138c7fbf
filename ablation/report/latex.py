"""Paper-ready tables: the report's own data frames (a comparison's counts and accuracies,
its verdicts) as booktabs LaTeX, one `.tex` file per table beside the figures.

The cells are the markdown report's cells, translated (bold, ±, minus signs, ✓), never
recomputed, so a paper and the report cannot disagree. Columns a paper has no room for
(times, throughput, the correlation and P(A>B)) are left to the markdown and the CSVs.
A file needs `\\usepackage{booktabs}` and `\\usepackage{amssymb}` (for \\checkmark) in
the paper's preamble, and goes in with `\\input{...}`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ablation import results

_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
           "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
           "^": r"\textasciicircum{}"}
_SYMBOLS = {"±": r"$\pm$", "−": r"$-$", "–": "--", "—": "---", "✓": r"\checkmark",
            "≥": r"$\geq$", "≤": r"$\leq$", "¹": r"\textsuperscript{1}", "δ": r"$\delta$",
            "α": r"$\alpha$", "·": r"$\cdot$", "×": r"$\times$"}
PREAMBLE = "% needs \\usepackage{booktabs} and \\usepackage{amssymb} (\\checkmark)"
DROP = ("train time", "img/s", "epochs", "r", "P(A>B)", "MACs")  # no room in a paper


def cell(text: object) -> str:
    """One markdown cell as LaTeX: special characters escaped, **bold** as \\textbf, the
    report's symbols in math mode, a sign before a digit as a minus sign, and the `*`
    that marks an unreliable figure as a superscript."""
    parts = re.split(r"\*\*(.+?)\*\*", str(text))
    out = []
    for i, part in enumerate(parts):
        s = "".join(_ESCAPE.get(ch, _SYMBOLS.get(ch, ch)) for ch in part)
        s = re.sub(r"(?<![\w)])-(?=\d)", "$-$", s).replace("*", r"\textsuperscript{*}")
        out.append(rf"\textbf{{{s}}}" if i % 2 else s)
    return "".join(out)


def _numeric(value: object) -> bool:
    """A cell that reads as a number (a count with ✓, a mean ± std, a signed delta, or
    empty): its column is right-aligned."""
    text = str(value).replace("✓", "").replace(",", "").replace("*", "").strip()
    if text in ("", "–"):
        return True
    try:
        [float(x) for x in text.split(" ± ")]
    except ValueError:
        return False
    return True


def tabular(frame: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs `table` of `frame` (its cells as `cell` makes them): numeric columns
    right-aligned, text left."""
    frame = frame[[c for c in frame.columns if c not in DROP]]
    body = frame.map(cell)
    body.columns = [cell(c) for c in frame.columns]
    align = "".join("r" if all(_numeric(v) for v in frame[c]) else "l"
                    for c in frame.columns)
    styler = body.style.hide(axis="index")
    text = styler.to_latex(hrules=True, column_format=align, position="tbp",
                           position_float="centering", caption=cell(caption),
                           label=label)
    return f"{PREAMBLE}\n{text}"


def label(*parts: str) -> str:
    """A LaTeX label from the report's names (letters, digits, - and : only)."""
    return "tab:" + "-".join(re.sub(r"[^A-Za-z0-9]+", "-", p).strip("-") for p in parts)


def write(path: Path, frame: pd.DataFrame, caption: str, tag: str) -> None:
    """Write `frame` as a booktabs table to `path` (atomically, like the report)."""
    results.atomic_write_text(path, tabular(frame, caption, tag))
