"""Backbone pieces against the official PyTorch outputs (fixture 04_backbone).

Weights come from the fixture `.pt` files through the converter's own key mapping, so
these tests also check that mapping. Tolerances: README of the fixtures (outputs atol
5e-5 rtol 1e-5; train-mode running stats rtol 1e-5).
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FIXTURES, nchw, nhwc

from hyperstyle_jax.convert import hyperstyle as conv
from hyperstyle_jax.convert.common import SourceDict, load_torch_file, to_numpy_state_dict
from hyperstyle_jax.models import irse
from hyperstyle_jax.models.layers import BatchNorm, PReLU
from hyperstyle_jax.models.resnet import BasicBlock, HypernetBackbone, block_table

D = os.path.join(FIXTURES, "04_backbone")
ATOL, RTOL = 5e-5, 1e-5


@pytest.fixture(scope="module")
def io():
    return dict(np.load(os.path.join(D, "backbone_io.npz")))


def _sd(name, key_prefix=""):
    """The fixture's state dict; `key_prefix` is prepended to every key (for bare modules)."""
    path = os.path.join(D, f"{name}.pt")
    sd = to_numpy_state_dict(load_torch_file(path), path)
    return SourceDict({key_prefix + k: v for k, v in sd.items()}, path)


def _close(got, want, atol=ATOL, rtol=RTOL):
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


class Stack(nn.Module):
    """`ResNet._make_layer(BasicBlock, planes, n, stride)` with blocks named b0, b1, …"""
    planes: int
    n: int
    stride: int
    inplanes: int

    @nn.compact
    def __call__(self, x, train=False):
        for i, (p, s, ds) in enumerate(
            block_table([(self.planes, self.n, self.stride)], self.inplanes)
        ):
            x = BasicBlock(p, s, ds, name=f"b{i}")(x, train)
        return x


def load(model, name, *inputs, key_prefix=""):
    """`model`'s variables from fixture `name`.pt via the converter; every key must be used."""
    src = _sd(name, key_prefix)
    v = conv.from_state_dict(src, conv.eval_shape_init(model, *inputs))
    src.finish()
    return v


# ----------------------------------------------------------------------------- closed forms


def test_batchnorm_closed_form():
    """Train mode: biased variance normalizes, unbiased variance updates (n = B*H*W)."""
    x = np.random.RandomState(0).randn(3, 4, 5, 2).astype(np.float32) * 3 + 1
    bn = BatchNorm()
    v = {
        "params": {
            "weight": np.array([2.0, 0.5], np.float32),
            "bias": np.array([0.1, -1], np.float32),
        },
        "batch_stats": {
            "running_mean": np.array([0.3, 0.2], np.float32),
            "running_var": np.array([1.5, 0.7], np.float32),
        },
    }
    y, upd = bn.apply(v, jnp.asarray(x), True, mutable=["batch_stats"])
    m = x.reshape(-1, 2).mean(0)
    var_b = x.reshape(-1, 2).var(0)
    var_u = x.reshape(-1, 2).var(0, ddof=1)
    _close(y, (x - m) / np.sqrt(var_b + 1e-5) * v["params"]["weight"] + v["params"]["bias"], 1e-5)
    _close(upd["batch_stats"]["running_mean"], 0.9 * np.array([0.3, 0.2]) + 0.1 * m, 1e-6)
    _close(upd["batch_stats"]["running_var"], 0.9 * np.array([1.5, 0.7]) + 0.1 * var_u, 1e-6)
    y_eval = bn.apply(v, jnp.asarray(x), False)
    _close(
        y_eval,
        (x - [0.3, 0.2]) / np.sqrt(np.array([1.5, 0.7]) + 1e-5) * [2.0, 0.5] + [0.1, -1],
        1e-5,
    )


def test_prelu_per_channel():
    x = jnp.asarray([[-2.0, -2.0, 3.0]])
    y = PReLU().apply({"params": {"weight": jnp.asarray([0.1, 0.5, 0.9])}}, x)
    _close(y, [[-0.2, -1.0, 3.0]], 0)


# ----------------------------------------------------------------------------- hypernet stem


@pytest.mark.parametrize("train", [False, True])
def test_hypernet_stem(io, train):
    m = HypernetBackbone(input_nc=6, stem_width=64, stages=())
    x = nhwc(io["in__hypernet_stem"])
    v = load(m, "hypernet_stem", x)
    if train:
        y, upd = m.apply(v, x, True, mutable=["batch_stats"])
        _close(nchw(y), io["out_train__hypernet_stem"])
        for s in ("running_mean", "running_var"):
            _close(
                upd["batch_stats"]["bn1"][s],
                io[f"train_state_after__hypernet_stem__bn1.{s}"],
                0,
                RTOL,
            )
    else:
        _close(nchw(m.apply(v, x, False)), io["out_eval__hypernet_stem"])


# ----------------------------------------------------------------------------- BasicBlocks


def test_basicblock_stack_nods(io):
    m, x = Stack(24, 2, 1, 24), nhwc(io["in__basicblock_stack_nods"])
    v = load(m, "basicblock_stack_nods", x, key_prefix="b")
    assert "downsample_0" not in v["params"]["b0"]
    y = m.apply(v, x)
    _close(nchw(y), io["out_eval__basicblock_stack_nods"])


@pytest.mark.parametrize("train", [False, True])
def test_basicblock_stack_ds(io, train):
    m, x = Stack(40, 2, 2, 24), nhwc(io["in__basicblock_stack_ds"])
    v = load(m, "basicblock_stack_ds", x, key_prefix="b")
    if not train:
        _close(nchw(m.apply(v, x)), io["out_eval__basicblock_stack_ds"])
        return
    y, upd = m.apply(v, x, True, mutable=["batch_stats"])
    _close(nchw(y), io["out_train__basicblock_stack_ds"])
    bs = upd["batch_stats"]
    pairs = {
        "0.bn1": bs["b0"]["bn1"],
        "0.bn2": bs["b0"]["bn2"],
        "0.downsample.1": bs["b0"]["downsample_1"],
        "1.bn1": bs["b1"]["bn1"],
        "1.bn2": bs["b1"]["bn2"],
    }
    for key, got in pairs.items():
        for s in ("running_mean", "running_var"):
            _close(got[s], io[f"train_state_after__basicblock_stack_ds__{key}.{s}"], 1e-7, RTOL)


# ----------------------------------------------------------------------------- IR / IR-SE


@pytest.mark.parametrize("name,cin,depth,stride,se", [
    ("ir_se_in32_d32_s2", 32, 32, 2, True),   # MaxPool2d(1, 2) shortcut, odd 15x13 input
    ("ir_se_in24_d48_s2", 24, 48, 2, True),   # conv + BN shortcut
    ("ir_se_in48_d48_s1", 48, 48, 1, True),
    ("ir_in24_d40_s2", 24, 40, 2, False),
])
def test_ir_units(io, name, cin, depth, stride, se):
    unit = (irse.bottleneck_IR_SE if se else irse.bottleneck_IR)(cin, depth, stride)
    x = nhwc(io[f"in__{name}"])
    v = load(unit, name, x)
    assert ("shortcut_layer_0" in v["params"]) == (cin != depth)
    _close(nchw(unit.apply(v, x)), io[f"out_eval__{name}"])


def test_se_module(io):
    m, x = irse.SEModule(64, 16), nhwc(io["in__se_module_64_r16"])
    y = m.apply(load(m, "se_module_64_r16", x), x)
    _close(nchw(y), io["out_eval__se_module_64_r16"])


def test_wencoder_input_layer(io):
    m, x = (
        irse.WEncoder(n_styles=18, units=(), input_width=64),
        nhwc(io["in__wencoder_input_layer"]),
    )
    shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x, method=irse.WEncoder.features))
    src = _sd("wencoder_input_layer")
    v = conv.from_state_dict(src, shapes)
    src.finish()
    y = m.apply(v, x, method=irse.WEncoder.features)
    _close(nchw(y), io["out_eval__wencoder_input_layer"])


def test_wencoder_head(io):
    m, x = (
        irse.WEncoder(n_styles=18, style_dim=512, units=((512, 512, 1),)),
        nhwc(io["in__wencoder_head"]),
    )
    shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x, method=irse.WEncoder.head))
    src = _sd("wencoder_head")
    v = conv.from_state_dict(src, shapes)
    src.finish()
    y = m.apply(v, x, method=irse.WEncoder.head)
    assert y.shape == (2, 18, 512)
    _close(np.asarray(y), io["out_eval__wencoder_head"])


def test_get_blocks_tables():
    for n, counts in ((50, (3, 4, 14, 3)), (100, (3, 13, 30, 3)), (152, (3, 8, 36, 3))):
        units = irse.get_blocks(n)
        assert len(units) == sum(counts)
        assert [u for u in units if u[2] == 2] == [
            (64, 64, 2),
            (64, 128, 2),
            (128, 256, 2),
            (256, 512, 2),
        ]
    with pytest.raises(ValueError, match="Must be one of"):
        irse.get_blocks(34)


# ----------------------------------------------------------------------------- ResNet-50 trunk


def test_resnet50_trunk_vs_torch_functional():
    """torchvision Bottleneck semantics (v1.5: stride on the 3x3), max-pool, global pool.

    No official fixture exists (the MoCo weights were not available), so the reference is
    written here with torch.nn.functional ops on a narrowed stage table.
    """
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    from hyperstyle_jax.models.resnet import ResNet50Trunk

    stages = ((8, 1, 1), (16, 2, 2))
    rs = np.random.RandomState(0)
    sd = {}

    def conv_w(key, o, i, k):
        sd[f"{key}.weight"] = (rs.randn(o, i, k, k) / np.sqrt(i * k * k)).astype(np.float32)

    def bn(key, c):
        sd[f"{key}.weight"] = rs.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{key}.bias"] = rs.randn(c).astype(np.float32) * 0.1
        sd[f"{key}.running_mean"] = rs.randn(c).astype(np.float32) * 0.1
        sd[f"{key}.running_var"] = rs.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{key}.num_batches_tracked"] = np.array(7, np.int64)

    conv_w("conv1", 64, 3, 7)
    bn("bn1", 64)
    blocks, inplanes = [], 64
    for s, (planes, n, stride) in enumerate(stages):
        for b in range(n):
            key, st = f"layer{s + 1}.{b}", (stride if b == 0 else 1)
            conv_w(f"{key}.conv1", planes, inplanes, 1), bn(f"{key}.bn1", planes)
            conv_w(f"{key}.conv2", planes, planes, 3), bn(f"{key}.bn2", planes)
            conv_w(f"{key}.conv3", 4 * planes, planes, 1), bn(f"{key}.bn3", 4 * planes)
            ds = st != 1 or inplanes != 4 * planes
            if ds:
                (
                    conv_w(f"{key}.downsample.0", 4 * planes, inplanes, 1),
                    bn(f"{key}.downsample.1", 4 * planes),
                )
            blocks.append((key, st, ds))
            inplanes = 4 * planes
    t = {k: torch.from_numpy(v) for k, v in sd.items()}

    def tbn(x, key):
        return F.batch_norm(
            x,
            t[f"{key}.running_mean"],
            t[f"{key}.running_var"],
            t[f"{key}.weight"],
            t[f"{key}.bias"],
            training=False,
            eps=1e-5,
        )

    def reference(x):
        x = F.max_pool2d(
            F.relu(tbn(F.conv2d(x, t["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1
        )
        for key, st, ds in blocks:
            out = F.relu(tbn(F.conv2d(x, t[f"{key}.conv1.weight"]), f"{key}.bn1"))
            out = F.relu(
                tbn(F.conv2d(out, t[f"{key}.conv2.weight"], stride=st, padding=1), f"{key}.bn2")
            )
            out = tbn(F.conv2d(out, t[f"{key}.conv3.weight"]), f"{key}.bn3")
            idn = (
                tbn(F.conv2d(x, t[f"{key}.downsample.0.weight"], stride=st), f"{key}.downsample.1")
                if ds
                else x
            )
            x = F.relu(out + idn)
        return x.mean((2, 3))

    x = rs.randn(2, 3, 30, 26).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    model = ResNet50Trunk(stages)
    src = SourceDict(sd, "random resnet50")
    v = conv.from_state_dict(src, conv.eval_shape_init(model, nhwc(x)))
    src.finish()
    got = model.apply(v, nhwc(x))
    assert got.shape == (2, 64)
    _close(np.asarray(got), want, 1e-5, 1e-5)


def test_batchnorm_train_stats_over_global_batch_on_a_mesh():
    """Data-parallel jit (2 fake CPU devices, batch sharded): statistics over the whole batch."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from hyperstyle_jax.models.layers import BatchNorm
        assert len(jax.devices()) == 2
        mesh = Mesh(np.array(jax.devices()), ("data",))
        x = np.random.RandomState(0).randn(4, 3, 3, 2).astype(np.float32)
        x[:2] += 5.0  # the two shards have very different means
        v = {"params": {"weight": np.ones(2, np.float32), "bias": np.zeros(2, np.float32)},
             "batch_stats": {"running_mean": np.zeros(2, np.float32),
                             "running_var": np.ones(2, np.float32)}}
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        y, upd = jax.jit(lambda v, x: BatchNorm().apply(v, x, True, mutable=["batch_stats"]))(v, xs)
        flat = x.reshape(-1, 2)
        np.testing.assert_allclose(np.asarray(y).reshape(-1, 2),
                                   (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5), atol=1e-5)
        np.testing.assert_allclose(upd["batch_stats"]["running_var"],
                                   0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
