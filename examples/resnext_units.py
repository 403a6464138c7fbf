"""The ResNeXt bottleneck (Xie et al. 2017, Fig. 3c): 1x1, grouped 3x3, 1x1, with BN
after each conv and ReLU after the first two and after the addition; a projection with
BN where the shape changes. The same unit at cardinality 1 is the plain bottleneck, so
the comparison isolates the grouped convolution.
"""

from ablation import unit


def bottleneck(ops, x, block, groups):
    n = block.name
    inner = block.inner or block.filters // 2
    y = ops.conv(x, inner, 1, 1, f"{n}_conv1")
    y = ops.relu(ops.bn(y, f"{n}_bn1"), f"{n}_relu1")
    y = ops.conv(y, inner, 3, block.stride, f"{n}_conv2", groups=groups)
    y = ops.relu(ops.bn(y, f"{n}_bn2"), f"{n}_relu2")
    y = ops.bn(ops.conv(y, block.filters, 1, 1, f"{n}_conv3"), f"{n}_bn3")
    s = x
    if block.project:
        s = ops.conv(x, block.filters, 1, block.stride, f"{n}_proj", main=False)
        s = ops.bn(s, f"{n}_proj_bn")
    return ops.relu(ops.add(y, s, f"{n}_add"), f"{n}_out")


@unit("resnext_c8")
def resnext_c8(ops, x, block):
    return bottleneck(ops, x, block, groups=8)


@unit("bottleneck_c1")
def bottleneck_c1(ops, x, block):
    return bottleneck(ops, x, block, groups=1)
