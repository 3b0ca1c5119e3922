"""hyperstyle_jax: HyperStyle (Alaluf et al., CVPR 2022) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="hyperstyle_jax",
    version="0.1.0",
    description="HyperStyle StyleGAN2 inversion with a hypernetwork, in JAX/Flax",
    packages=find_packages(include=["hyperstyle_jax", "hyperstyle_jax.*"]),
    # CLIP's BPE merges (from clip-anytorch 2.6.0, MIT) and StyleCLIP's templates, with their
    # licence; the editing page's HTML/JS/CSS.
    package_data={"hyperstyle_jax.clip": ["bpe_simple_vocab_16e6.txt.gz", "templates.txt",
                                          "LICENSE"],
                  "hyperstyle_jax.app": ["static/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "numpy",
        "ml-collections",
        "absl-py",
        "pillow",
        "tqdm",
        "tensorboardX",
        # Datasets: TFDS writes array_record files, grain reads them; no TensorFlow.
        "tensorflow-datasets",
        "array-record",
        "grain",
        "importlib_resources",  # needed by tfds, not declared by it
    ],
    extras_require={
        # torch only reads official .pt files in tools/convert_weights.py.
        # 2.13.0 is the CPU build on local disk; other versions pull gigabytes.
        "convert": ["torch==2.13.0", "safetensors"],
        # StyleCLIP's tokenizer cleans text as CLIP's does (optional: it falls back to `re`).
        "clip": ["ftfy", "regex"],
        # TensorBoard to view <workdir>/tensorboard (the trainer writes with tensorboardX).
        "tensorboard": ["tensorboard"],
        # Face alignment (hyperstyle_jax.align): prebuilt dlib, the 68-point predictor in a wheel.
        "align": ["dlib-bin", "face-recognition-models", "scipy"],
        # Video (edit <subcommand> --video): PyAV, FFmpeg (with libx264) inside the wheel.
        "video": ["av"],
        # The editing page (python -m hyperstyle_jax.app).
        "app": ["fastapi", "uvicorn", "python-multipart"],
        # playwright drives Debian's chromium (.ci/run installs it); never `playwright install`.
        "test": ["pytest", "pytest-xdist", "ruff", "torch==2.13.0", "dlib-bin",
                 "face-recognition-models", "scipy", "safetensors", "ftfy", "regex",
                 "fastapi", "uvicorn", "python-multipart", "playwright", "av"],
    },
)
