"""CPU stand-in for the official `upfirdn2d` CUDA op (same semantics as its native path):
zero-insert by `up`, pad (negative pads crop), true 2-D convolution with `kernel`, keep
every `down`-th sample. Computed as one depthwise conv so that oneDNN runs it."""
import torch
from torch.nn import functional as F


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):
    """input [B, C, H, W], kernel [kh, kw] -> [B, C, (H*up + p0 + p1 - kh) // down + 1, ...]."""
    up_x, up_y = _pair(up)
    down_x, down_y = _pair(down)
    if len(pad) == 2:
        px0, px1, py0, py1 = pad[0], pad[1], pad[0], pad[1]
    else:
        px0, px1, py0, py1 = pad
    b, c, h, w = input.shape
    x = input
    if up_x > 1 or up_y > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up_x - 1, 0, 0, 0, up_y - 1])  # zeros after every sample
        x = x.reshape(b, c, h * up_y, w * up_x)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    kh, kw = kernel.shape
    # conv2d is a correlation: flip the kernel for a true convolution.
    weight = torch.flip(kernel, [0, 1]).to(x).view(1, 1, kh, kw).repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down_y, ::down_x]
