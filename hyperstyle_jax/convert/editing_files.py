"""Editing files in the official PyTorch format: InterFaceGAN directions (a bare tensor,
`editing/interfacegan_directions/*.pt`) and GANSpace PCA files (`cars_pca.pt`, a dict of
tensors). torch is needed only here; `hyperstyle_jax.editing` reads .npy/.npz without it.
"""
from __future__ import annotations

from typing import Mapping, Union

import numpy as np

from hyperstyle_jax.convert.common import ConversionError, load_torch_file


def _to_numpy(v, path: str, what: str) -> np.ndarray:
    import torch  # noqa: PLC0415  optional extra (convert)

    if not isinstance(v, torch.Tensor):
        raise ConversionError(f"{path}: {what} is a {type(v).__name__}, expected a tensor")
    return v.detach().cpu().numpy().astype(np.float32)


def read_tensor_file(path: str) -> Union[np.ndarray, dict]:
    """A .pt holding a bare tensor -> float32 numpy; a dict of tensors -> dict of numpy.

    Loaded with `weights_only=True` and `map_location='cpu'` (the official `pose.pt` was
    saved from CUDA)."""
    obj = load_torch_file(path)
    if isinstance(obj, Mapping):
        return {str(k): _to_numpy(v, path, f"entry {k!r}") for k, v in obj.items()}
    return _to_numpy(obj, path, "the file's content")


def save_tensor_dict(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """`torch.save` a dict of float32 CPU tensors (the official `cars_pca.pt` layout)."""
    try:
        import torch  # noqa: PLC0415  optional extra (convert)
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConversionError(f"{path}: writing .pt needs torch; write .npz instead") from e
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v, np.float32))
                for k, v in arrays.items()}, path)
