"""MLP-Mixer (Tolstikhin et al. 2021) for 32x32 images.

Stem: 4x4 patches embedded to the width (the built-in `patchify4` stem), as tokens.
Block: LayerNorm, then an MLP across the tokens (the token mixing: the tokens'
axis turned last, a dense layer, GELU, a dense layer, turned back), added to its input;
LayerNorm, an MLP across the channels, added. Head: LayerNorm, the average over tokens,
a softmax dense layer (the built-in `ln_gap` head). Width 128, 6 blocks, token MLP 64,
channel MLP 256: 456,330 parameters on CIFAR-10, as the same network in plain Keras.
"""

from ablation import stem, unit


@stem("mixer_patches")
def mixer_patches(ops, x, net):
    patch = 4
    return ops.tokens(ops.conv(x, net.stem_filters, patch, patch, "stem_patchify"),
                      "stem_tokens")


@unit("mixer")
def mixer(ops, x, block):
    n, tokens = block.name, x.shape[1]
    token_mlp, channel_mlp = 64, 256  # the two MLPs' hidden widths
    y = ops.permute(ops.layernorm(x, f"{n}_ln1"), (2, 1), f"{n}_to_channels")
    y = ops.dense(y, token_mlp, f"{n}_token_mlp1", activation="gelu")
    y = ops.dense(y, tokens, f"{n}_token_mlp2", activation=None)
    x = ops.add(x, ops.permute(y, (2, 1), f"{n}_to_tokens"), f"{n}_add1")
    y = ops.dense(ops.layernorm(x, f"{n}_ln2"), channel_mlp, f"{n}_channel_mlp1",
                  activation="gelu")
    y = ops.dense(y, block.filters, f"{n}_channel_mlp2", activation=None)
    return ops.add(x, y, f"{n}_add2")
