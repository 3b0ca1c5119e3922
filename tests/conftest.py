"""Test setup: fp32 matmuls everywhere (GPUs default to TF32, TPUs to bf16 passes)."""
import os

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(scope="session")
def fixtures_dir():
    return FIXTURES
