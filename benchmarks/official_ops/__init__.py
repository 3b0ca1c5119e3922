# Pure-PyTorch stand-ins for the official HyperStyle repo's two CUDA ops (fused_act,
# upfirdn2d), installed over `<official>/models/stylegan2/op/` by
# benchmarks/compare_official.py so that the official code runs on a CPU-only torch.
from .fused_act import FusedLeakyReLU, fused_leaky_relu  # noqa: F401
from .upfirdn2d import upfirdn2d  # noqa: F401
