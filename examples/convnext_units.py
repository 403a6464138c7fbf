"""A ConvNeXt-style block (Liu et al. 2022) on ResNet-32's CIFAR layout.

Block: 7x7 depthwise conv, LayerNorm, 1x1 conv to 4x the width, GELU, 1x1 conv back,
added to the input. Where the width or the map changes (the first block of a stage),
ConvNeXt's downsampling layer comes first: LayerNorm, then a 2x2 stride-2 conv (1x1
when only the width changes). The network keeps the blog's stem and a plain head
(global average pooling, softmax); ConvNeXt's layer scale and final LayerNorm are
left out to keep the example short.
"""

from ablation import unit

EXPANSION = 4


@unit("convnext")
def convnext(ops, x, block):
    n = block.name
    if block.project:  # the downsampling layer, outside the residual
        x = ops.layernorm(x, f"{n}_down_ln")
        k = 2 if block.stride == 2 else 1
        x = ops.conv(x, block.filters, k, block.stride, f"{n}_down", main=False)
    y = ops.depthwise(x, 7, 1, f"{n}_dw")
    y = ops.layernorm(y, f"{n}_ln")
    y = ops.conv(y, EXPANSION * block.filters, 1, 1, f"{n}_pw1")
    y = ops.act(y, "gelu", f"{n}_gelu")
    y = ops.conv(y, block.filters, 1, 1, f"{n}_pw2")
    return ops.add(x, y, f"{n}_add")
