"""ablation: architecture-ablation benchmarks for deep-learning researchers.

Public API (stable): `build_model(name, num_classes=10, input_shape=(32, 32, 3))`
and `variants(pattern="*")`. Keras is imported only when a model is built, so
listing, status and reports stay fast.
"""

from ablation.registry import variants

__version__ = "0.1.0"
__all__ = ["__version__", "build_model", "count_params", "variants"]


def __getattr__(name: str):  # lazy: importing keras costs seconds
    if name in ("build_model", "count_params"):
        from ablation import models

        return getattr(models, name)
    raise AttributeError(f"module 'ablation' has no attribute {name!r}")
