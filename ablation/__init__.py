"""ablation: architecture-ablation benchmarks for deep-learning researchers.

Public API (stable; docs/studies.md):

* `variants(pattern="*")`: the default (blog) study's variant names matching a glob;
* `build_model(name_or_variant, num_classes=10, input_shape=(32, 32, 3))`: the Keras
  model; `count_params(...)`: exact counts, depth and multiply-adds without building;
* `load_study(name_or_path)`: a built-in study or a study file; registers its variants;
* `unit(name)`: decorator registering a residual unit `(ops, x, block) -> y`;
  `shortcut(ops, x, h, block)`: the block's shortcut, for use inside a unit;
* `stem(name)`, `head(name)`: decorators registering a stem or a head `(ops, x, net) -> y`
  (`Net`: what they read of the network);
* `load_model(path)`: a run's saved `.h5` (or its run folder), its study's own layers
  imported first.

Keras is imported only when a model is built, so listing, status and reports stay fast.
Its backend is KERAS_BACKEND when set, else TensorFlow, else JAX (ablation.backend).
"""

import importlib
from typing import Any

from ablation import backend as _backend
from ablation import registry as _registry

# TensorFlow not installed, JAX installed: Keras must load JAX (ablation.backend)
_backend.prefer_installed()
# TensorFlow's C++ start-up log lines never reach a user's terminal (ablation.backend)
_backend.quiet_tensorflow_import()

__version__ = "0.7.0.dev0"
__all__ = ["Block", "Net", "Study", "__version__", "build_model", "count_params", "head",
           "load_model", "load_study", "shortcut", "stem", "unit", "variants"]

# The API's names load their modules on first use (PEP 562), so `import ablation` (and
# the command line, which installs its signal handling first) starts in milliseconds.
_LAZY = {"Block": "ablation.models", "Net": "ablation.models", "build_model": "ablation.models",
         "count_params": "ablation.models", "shortcut": "ablation.models",
         "unit": "ablation.models", "stem": "ablation.models", "head": "ablation.models",
         "load_model": "ablation.runs", "Study": "ablation.study",
         "load_study": "ablation.study"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ablation' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def _load_builtin_studies() -> None:
    from ablation.study import load_builtins

    load_builtins()


# every entry point (build_model, count_params, registry.get, ...) finds the built-in
# studies' variants, whatever a fresh process calls first
_registry.add_source(_load_builtin_studies)


def variants(pattern: str = "*") -> list[str]:
    """The default study's variants matching a shell glob, in the study's order."""
    from ablation.study import load_study

    return load_study().variants(pattern)
