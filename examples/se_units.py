"""Squeeze-and-excitation (Hu et al. 2018) on the full pre-activation unit (e).

The unit is (e) of He et al. 2016 (BN-ReLU, conv3x3, BN-ReLU, conv3x3, add), with an SE
gate on the residual branch before the addition: global average pooling, a dense
bottleneck of C/4 units with ReLU, a dense layer of C units with a sigmoid, and the
branch scaled channel by channel. The gate's dense layers sit beside the branch, so
they do not count in depth (`main=False`).
"""

from ablation import shortcut, unit

RATIO = 4  # the SE reduction ratio (16 in the paper's ImageNet nets; CIFAR widths are small)


@unit("e_se")
def e_se(ops, x, block):
    n = block.name
    h = ops.relu(ops.bn(x, f"{n}_preact_bn"), f"{n}_preact_relu")
    y = ops.conv(h, block.filters, 3, block.stride, f"{n}_conv1")
    y = ops.relu(ops.bn(y, f"{n}_bn1"), f"{n}_relu1")
    y = ops.conv(y, block.filters, 3, 1, f"{n}_conv2")
    s = ops.pool(y, f"{n}_se_pool")
    s = ops.dense(s, max(1, block.filters // RATIO), f"{n}_se_reduce", activation="relu",
                  main=False)
    s = ops.dense(s, block.filters, f"{n}_se_expand", activation="sigmoid", main=False)
    y = ops.multiply(y, s, f"{n}_se_scale")
    return ops.add(y, shortcut(ops, x, h, block), f"{n}_add")
