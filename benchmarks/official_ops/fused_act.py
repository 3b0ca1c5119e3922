"""CPU stand-in for the official `fused_act` CUDA op: leaky_relu(x + bias) * scale."""
import math

import torch
from torch import nn
from torch.nn import functional as F


def fused_leaky_relu(input, bias=None, negative_slope=0.2, scale=math.sqrt(2)):
    """x: [B, C, ...]; bias: [C] added over dim 1 (None: no bias), as the CUDA kernel."""
    if bias is not None:
        input = input + bias.view(1, -1, *([1] * (input.ndim - 2)))
    return F.leaky_relu(input, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """The official module: a learned bias [channel] (init 0), then `fused_leaky_relu`."""

    def __init__(self, channel, bias=True, negative_slope=0.2, scale=math.sqrt(2)):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, input):
        return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)
