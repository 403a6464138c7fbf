"""Networks from variants: the ops units are written in, the units, the one builder.

* `ops`: each op defined once (its arguments, its count rule, its Keras layer), and the
  two interpreters that run them: counting (exact parameters, depth and multiply-adds
  without building) and building (the Keras model);
* `units`: `Block`, the built-in residual units of He et al. 2016 (Fig. 4 a-e, basic and
  bottleneck) and the blog's, and the units a study brings, in its own namespace;
* `network`: stems, heads and the builder that turns a variant into either.

Deviations from the papers that the blog's parameter counts demand are documented in
the README ("Deviations from the papers").
"""

from ablation.models.network import (
    HEADS,
    STEMS,
    ModelInfo,
    build_model,
    check_counts,
    count_params,
    layer_inputs,
    load_pretrained,
)
from ablation.models.ops import ACTIVATIONS, BN_EPSILON, BN_MOMENTUM, OPS, OpError, signature
from ablation.models.units import (
    BUILTIN_UNITS,
    Block,
    UnitError,
    resolve,
    shadowed,
    shortcut,
    unit,
    unit_source_hash,
    user_unit_hash,
    user_units,
)

__all__ = ["ACTIVATIONS", "BN_EPSILON", "BN_MOMENTUM", "BUILTIN_UNITS",
           "HEADS", "OPS", "STEMS", "Block", "ModelInfo",
           "OpError", "UnitError", "build_model", "check_counts", "count_params",
           "layer_inputs", "load_pretrained", "resolve", "shadowed", "shortcut", "signature",
           "unit", "unit_source_hash", "user_unit_hash", "user_units"]
