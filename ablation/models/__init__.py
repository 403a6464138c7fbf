"""Networks from variants: the ops units are written in, the units, the one builder.

* `ops`: each op defined once (its arguments, its count rule, its Keras layer);
* `graph`: the two interpreters that run them, counting (exact parameters, depth and
  multiply-adds without building) and building (the Keras model), and their shared
  bookkeeping;
* `parts`: units, stems and heads by name, the built-in ones and a study's own (in its
  module's namespace); `Net`, what a stem or head reads; the built-in stems and heads;
* `units`: `Block`, the built-in residual units of He et al. 2016 (Fig. 4 a-e, basic and
  bottleneck) and the blog's;
* `network`: the builder that turns a variant into counts or a Keras model.

Deviations from the papers that the blog's parameter counts demand are documented in
the README ("Deviations from the papers").
"""

from ablation.models.graph import OPS, OpError, signature
from ablation.models.network import (
    ModelInfo,
    build_model,
    check_counts,
    check_whitening,
    count_params,
    layer_inputs,
    load_pretrained,
    net_of,
    set_from_data,
)
from ablation.models.ops import ACTIVATIONS, BN_EPSILON, BN_MOMENTUM
from ablation.models.parts import HEADS, STEMS, Net, Parts, head, register_layers, stem
from ablation.models.units import (
    BUILTIN_UNITS,
    UNITS,
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

# every kind of part by the name its records use (a job's config, a definition)
PARTS: dict[str, Parts] = {"unit": UNITS, "stem": STEMS, "head": HEADS}

__all__ = ["ACTIVATIONS", "BN_EPSILON", "BN_MOMENTUM", "BUILTIN_UNITS", "HEADS", "OPS",
           "PARTS", "STEMS", "UNITS", "Block", "ModelInfo", "Net", "OpError", "Parts",
           "UnitError", "build_model", "check_counts", "check_whitening", "count_params", "head",
           "layer_inputs", "load_pretrained", "net_of", "register_layers", "resolve",
           "set_from_data", "shadowed", "shortcut",
           "signature", "stem", "unit", "unit_source_hash", "user_unit_hash", "user_units"]
