"""A small Vision Transformer (Dosovitskiy et al. 2021) for 32x32 images.

Stem: 4x4 patches embedded to the width (the built-in `patchify4` stem's conv), as
tokens, a learned class token before them and a learned position embedding added.
Block (pre-LN): LayerNorm, multi-head self-attention, added to its input; LayerNorm, an
MLP of twice the width with GELU, added. Head: LayerNorm, the class token, a softmax
dense layer (the built-in `ln_cls` head). Width 96, 6 blocks of 4 heads: 460,906
parameters on CIFAR-10, as the same network in plain Keras.
"""

from ablation import stem, unit


@stem("vit_patches")
def vit_patches(ops, x, net):
    patch = 4
    y = ops.conv(x, net.stem_filters, patch, patch, "stem_patchify")
    y = ops.class_token(ops.tokens(y, "stem_tokens"), "stem_cls")
    return ops.position_embedding(y, "stem_pos")


@unit("vit")
def vit(ops, x, block):
    n, heads, mlp = block.name, 4, 2  # 4 heads; an MLP of twice the width
    y = ops.attention(ops.layernorm(x, f"{n}_ln1"), heads, f"{n}_attn")
    x = ops.add(x, y, f"{n}_add1")
    y = ops.dense(ops.layernorm(x, f"{n}_ln2"), mlp * block.filters, f"{n}_mlp1",
                  activation="gelu")
    y = ops.dense(y, block.filters, f"{n}_mlp2", activation=None)
    return ops.add(x, y, f"{n}_add2")
