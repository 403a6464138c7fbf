"""The training recipe: the blog's defaults, the step schedule, and a stable identity.

Two runs are comparable (poolable over seeds) exactly when their recipes are equal;
the recipe id names the results folder, so a 30-epoch study never overwrites a
200-epoch one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from ablation.errors import AblationError

PRECISIONS = ("fp32", "bf16", "fp16")
AUGMENTS = ("blog", "crop")


@dataclass(frozen=True)
class Recipe:
    """Everything but the variant and the seed that decides a run's numbers."""

    dataset: str = "cifar10"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4  # L2 coefficient on every conv and dense kernel
    augment: str = "blog"
    train_limit: int | None = None
    test_limit: int | None = None
    precision: str = "fp32"

    def __post_init__(self):
        if self.epochs < 1:
            raise AblationError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise AblationError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise AblationError(f"learning rate must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise AblationError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.augment not in AUGMENTS:
            raise AblationError(f"augment must be one of {', '.join(AUGMENTS)}")
        if self.precision not in PRECISIONS:
            raise AblationError(f"precision must be one of {', '.join(PRECISIONS)}")
        for name in ("train_limit", "test_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise AblationError(f"{name.replace('_', '-')} must be at least 1, got {v}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def id(self) -> str:
        """Readable and unique: `cifar10-e200-b128-blog-fp32-3f9a1c`."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode())
        parts = [self.dataset, f"e{self.epochs}", f"b{self.batch_size}", self.augment,
                 self.precision]
        if self.train_limit or self.test_limit:
            parts.append(f"sub{self.train_limit or 'all'}-{self.test_limit or 'all'}")
        return "-".join([*parts, digest.hexdigest()[:6]])

    def milestones(self) -> tuple[int, int]:
        """The first epochs (0-based) at lr/10 and lr/100: (81, 122) at E = 200."""
        return -(-405 * self.epochs // 1000), -(-61 * self.epochs // 100)

    def learning_rate(self, epoch: int) -> float:
        """The blog's step schedule scaled to the run: lr while epoch < 0.405 E,
        lr/10 while epoch < 0.61 E, then lr/100 (81 and 122 at E = 200).

        Compared in integers, so 0.405 * 200 cannot round to 81.00000000000001.
        """
        if epoch * 1000 < 405 * self.epochs:
            return self.lr
        if epoch * 100 < 61 * self.epochs:
            return self.lr / 10
        return self.lr / 100
