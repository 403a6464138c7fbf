"""ConvMixer (Trockman & Kolter 2022, "Patches Are All You Need?") at CIFAR size.

Stem: the image cut into p x p patches, each embedded by a p x p conv of stride p, then
GELU and BN. Block: a depthwise k x k conv, GELU, BN, added to its input (the spatial
mixing); a pointwise conv, GELU, BN (the channel mixing). Head: global average pooling
and a softmax dense layer (the built-in `plain` head). ConvMixer-256/8 with p = 2 and
k = 5 has 602,890 parameters on CIFAR-10, as the same network in plain Keras.
"""

from ablation import stem, unit


@stem("convmixer_patches")
def convmixer_patches(ops, x, net):
    patch = 2
    y = ops.conv(x, net.stem_filters, patch, patch, "stem_patchify")
    return ops.bn(ops.act(y, "gelu", "stem_gelu"), "stem_bn")


@unit("convmixer")
def convmixer(ops, x, block):
    n, kernel = block.name, 5
    y = ops.depthwise(x, kernel, 1, f"{n}_dw")
    y = ops.bn(ops.act(y, "gelu", f"{n}_dw_gelu"), f"{n}_dw_bn")
    x = ops.add(x, y, f"{n}_add")
    y = ops.conv(x, block.filters, 1, 1, f"{n}_pw")
    return ops.bn(ops.act(y, "gelu", f"{n}_pw_gelu"), f"{n}_pw_bn")
