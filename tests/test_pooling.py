"""adaptive_avg_pool2d against PyTorch's AdaptiveAvgPool2d (the independent reference)."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hyperstyle_jax.models.pooling import adaptive_avg_pool2d


@pytest.mark.parametrize("hw_in,hw_out", [
    ((1024 // 8, 1024 // 8), (32, 32)),   # block mean, as 1024 -> 256
    ((188, 188), (112, 112)),             # ID-loss crop -> 112, uneven bins
    ((64, 64), (256, 256)),               # upsampling replicates pixels
    ((384 // 2, 512 // 2), (96, 128)),    # cars band
    ((7, 6), (3, 4)),
])
def test_matches_torch(hw_in, hw_out):
    x = np.random.RandomState(0).randn(2, 3, *hw_in).astype(np.float32)
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), hw_out).numpy()
    got = adaptive_avg_pool2d(jnp.asarray(x.transpose(0, 2, 3, 1)), hw_out)
    np.testing.assert_allclose(np.asarray(got), ref.transpose(0, 2, 3, 1), atol=1e-6)
