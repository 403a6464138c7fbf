"""Stochastic depth (Huang et al. 2016) on the full pre-activation unit (e): in training,
each residual branch is dropped for a whole sample with a rate that grows linearly with
the block's position, to FINAL_RATE at the last block; at test time the full net runs.
"""

from ablation import shortcut, unit

FINAL_RATE = 0.2  # Huang et al.'s "linear decay" rule ends at 0.5; 0.2 is common today


@unit("e_droppath")
def e_droppath(ops, x, block):
    n = block.name
    rate = FINAL_RATE * (block.position + 1) / block.blocks
    h = ops.relu(ops.bn(x, f"{n}_preact_bn"), f"{n}_preact_relu")
    y = ops.conv(h, block.filters, 3, block.stride, f"{n}_conv1")
    y = ops.relu(ops.bn(y, f"{n}_bn1"), f"{n}_relu1")
    y = ops.conv(y, block.filters, 3, 1, f"{n}_conv2")
    y = ops.drop_path(y, rate, f"{n}_droppath")
    return ops.add(y, shortcut(ops, x, h, block), f"{n}_add")
