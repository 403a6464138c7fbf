"""A study's `[robustness]` table as the evaluation reads it (docs/robustness.md):
which corrupted images, which severities, which extra test sets, and the variant the
normalised mCE divides by. `ablation.robustness` evaluates by it; the report reads its
reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ablation.data import corruptions as defs

GENERATED, NONE = "generated", "none"


@dataclass(frozen=True)
class Settings:
    """What `ablation evaluate` does, from the study's `[robustness]` table and the
    command's flags (docs/robustness.md)."""

    corruptions: str = GENERATED  # "generated", "none", or the released files' folder
    severities: tuple[int, ...] = defs.SEVERITIES
    seed: int = 0  # of the generated corruptions' draws
    frost_images: str | None = None  # the paper's frost pictures: the published frost
    reference: str | None = None  # the variant the normalised mCE divides by
    test_sets: tuple[tuple[str, str], ...] = field(default=())  # (name, path)

    def source(self) -> str:
        """How the corrupted images were made, as robustness.csv records it: a run's
        rows under another source are not pooled with these."""
        if self.corruptions == GENERATED:
            frost = "frost pictures" if self.frost_images else "procedural frost"
            return f"generated v{defs.VERSION} seed {self.seed}, {frost}"
        return f"released {Path(self.corruptions).resolve()}"
