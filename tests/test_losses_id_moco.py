"""ID and MoCo losses end to end against independent PyTorch references.

No forward fixture exists for these networks (fixtures README: "Losses not fixtured"),
so this file builds the official architectures in plain torch (TreB1eN `Backbone` /
`bottleneck_IR_SE` / `SEModule`, torchvision `resnet50`), checks that their state-dict
keys and shapes equal the official key listings (07_key_listings), randomizes them, runs
the official loss computations (crop + AdaptiveAvgPool2d(112) / F.interpolate(224), l2
norm, 1 - dot) and compares with ours, loading the weights through our converters.
The IR-SE units themselves are also checked against fixture 04 in tests/test_backbone.py.
"""
import json
import os

import jax
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F
from helpers import FIXTURES, nhwc

from hyperstyle_jax.convert.losses import arcface_from_state_dict, moco_from_state_dict
from hyperstyle_jax.losses import LossWeights, compute_losses

LISTINGS = os.path.join(FIXTURES, "07_key_listings")


# ----------------------------------------------------------------------------- torch references


class TorchSE(tnn.Module):
    def __init__(self, channels, reduction):
        super().__init__()
        self.avg_pool = tnn.AdaptiveAvgPool2d(1)
        self.fc1 = tnn.Conv2d(channels, channels // reduction, 1, padding=0, bias=False)
        self.relu = tnn.ReLU()
        self.fc2 = tnn.Conv2d(channels // reduction, channels, 1, padding=0, bias=False)
        self.sigmoid = tnn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class TorchIRUnit(tnn.Module):
    def __init__(self, cin, depth, stride, se):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = tnn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = tnn.Sequential(tnn.Conv2d(cin, depth, 1, stride, bias=False),
                                                 tnn.BatchNorm2d(depth))
        layers = [
            tnn.BatchNorm2d(cin),
            tnn.Conv2d(cin, depth, 3, 1, 1, bias=False),
            tnn.PReLU(depth),
            tnn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            tnn.BatchNorm2d(depth),
        ]
        if se:
            layers.append(TorchSE(depth, 16))
        self.res_layer = tnn.Sequential(*layers)

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def torch_units(num_layers):
    n = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}[num_layers]
    units = []
    for cin, depth, k in zip((64, 64, 128, 256), (64, 128, 256, 512), n):
        units += [(cin, depth, 2)] + [(depth, depth, 1)] * (k - 1)
    return units


class TorchBackbone(tnn.Module):
    """TreB1eN / official `Backbone(112, num_layers, mode, drop_ratio, affine)`."""

    def __init__(self, num_layers=50, mode="ir_se", drop_ratio=0.6, affine=True):
        super().__init__()
        self.input_layer = tnn.Sequential(tnn.Conv2d(3, 64, 3, 1, 1, bias=False),
                                          tnn.BatchNorm2d(64), tnn.PReLU(64))
        self.output_layer = tnn.Sequential(
            tnn.BatchNorm2d(512),
            tnn.Dropout(drop_ratio),
            tnn.Flatten(),
            tnn.Linear(512 * 7 * 7, 512),
            tnn.BatchNorm1d(512, affine=affine),
        )
        self.body = tnn.Sequential(*[TorchIRUnit(c, d, s, mode == "ir_se")
                                     for c, d, s in torch_units(num_layers)])

    def forward(self, x):
        x = self.output_layer(self.body(self.input_layer(x)))
        return x / torch.norm(x, 2, 1, True)


class TorchBottleneck(tnn.Module):
    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU()
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), tnn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet50(tnn.Module):
    """torchvision `resnet50` layout; `fc` as MoCo v2's MLP head (fc.0, fc.2)."""

    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU()
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n, stride) in enumerate(
            ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
        ):
            blocks = []
            for b in range(n):
                blocks.append(TorchBottleneck(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Sequential(tnn.Linear(2048, 2048), tnn.ReLU(), tnn.Linear(2048, 128))


def randomize(model, seed):
    """Non-trivial BN statistics/affines and PReLU slopes; convs keep torch's init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (tnn.BatchNorm2d, tnn.BatchNorm1d)):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            elif isinstance(m, tnn.PReLU):
                m.weight.copy_(0.1 + 0.3 * torch.rand(m.weight.shape, generator=g))
    return model.eval()


def numpy_sd(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def listing_shapes(name, key):
    with open(os.path.join(LISTINGS, name)) as f:
        return {k: tuple(v["shape"]) for k, v in json.load(f)[key].items()}


@pytest.fixture(scope="module")
def images():
    """y_hat, y, x: 256x256 batches of 2 in [-1, 1], smooth enough that the random networks
    give cosines well away from 1. Sample 1 has y_hat == y: the closed form loss = 0 (cos = 1)
    is checked in the same call as the parity."""
    g = torch.Generator().manual_seed(0)
    base = F.interpolate(torch.rand(5, 3, 16, 16, generator=g) * 2 - 1, size=256, mode="bilinear")
    base = torch.round((base + 1) * 127.5) / 127.5 - 1  # 8-bit values, so PNGs hold them exactly
    return base[[0, 2]], base[[1, 2]], base[3:]


def torch_pair_terms(fy_hat, fy, fx):
    """The official IDLoss / MocoLoss loop, vectorised: (loss, improve, target, input, views)."""
    t, i, v = (fy_hat * fy).sum(1), (fy_hat * fx).sum(1), (fy * fx).sum(1)
    return float((1 - t).mean()), float((t - v).mean()), t.numpy(), i.numpy(), v.numpy()


# ----------------------------------------------------------------------------- ID


@pytest.fixture(scope="module")
def arcface():
    torch.manual_seed(0)
    net = randomize(TorchBackbone(50, "ir_se"), 1)
    variables, config = arcface_from_state_dict(numpy_sd(net), "torch-reference")
    assert config == {"num_layers": 50, "mode": "ir_se", "affine": True, "input_size": 112}
    return net, variables


def test_arcface_reference_is_the_official_layout(arcface):
    net, _ = arcface
    want = listing_shapes("arcface_ir_se50_backbone.json", "keys")
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert list(got) == list(want) and got == want


def test_id_loss_matches_torch(arcface, images):
    net, variables = arcface
    y_hat, y, x = images

    def feats(t):  # official IDLoss.extract_feats
        return net(F.adaptive_avg_pool2d(t[:, :, 35:223, 32:220], (112, 112)))

    with torch.no_grad():
        want = torch_pair_terms(feats(y_hat), feats(y), feats(x))
    assert want[2][0] < 0.99, "test images too similar to test anything"
    check_losses(variables, "id", LossWeights(id=1.0), images, want)


def test_id_metric_of_evaluate_matches_torch(arcface, images, tmp_path):
    """The evaluate CLI's 'id' metric (cosine of embeddings) on PNG files = the torch cosines."""
    from hyperstyle_jax.evaluate import evaluate
    from hyperstyle_jax.utils.images import save_image

    net, variables = arcface
    y_hat, y, _ = images
    for name, batch in (("pred", y_hat), ("gt", y)):
        for i, img in enumerate(batch.numpy()):
            save_image(str(tmp_path / name / f"{i}.png"), np.transpose(img, (1, 2, 0)))

    def feats(t):
        return net(F.adaptive_avg_pool2d(t[:, :, 35:223, 32:220], (112, 112)))

    with torch.no_grad():
        want = (feats(y_hat) * feats(y)).sum(1).numpy()
    rep = evaluate(str(tmp_path / "pred"), str(tmp_path / "gt"), ("id",), {"id": variables},
                   batch_size=2, progress=False)
    got = [rep["per_image"]["images"][str(i)]["id"] for i in range(2)]
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(got[1], 1.0, atol=1e-6)  # identical images


def check_losses(variables, name, weights, images, want):
    """One compile: value and grad of compute_losses (the trainer's entry point) with only
    the `name` term, compared with the torch reference's (loss, improve, cosines)."""
    y_hat, y, x = (nhwc(t) for t in images)

    @jax.jit
    def run(v, a, b, c):
        return jax.value_and_grad(
            lambda a_, b_: compute_losses({name: v}, a_, b_, weights, x=c, return_id_logs=True),
            argnums=(0, 1),
            has_aux=True,
        )(a, b)

    (total, terms), (g_hat, g_y) = run(variables, y_hat, y, x)
    assert set(terms) == {f"loss_{name}", "id_improve", "loss", "id_logs"}
    np.testing.assert_allclose(float(terms[f"loss_{name}"]), want[0], atol=2e-5)
    np.testing.assert_allclose(float(total), getattr(weights, name) * want[0], atol=2e-5)
    np.testing.assert_allclose(float(terms["id_improve"]), want[1], atol=2e-5)
    for k, w in zip(("diff_target", "diff_input", "diff_views"), want[2:]):
        np.testing.assert_allclose(np.asarray(terms["id_logs"][k]), w, atol=2e-5)
    g_hat, g_y = np.asarray(g_hat), np.asarray(g_y)
    assert np.all(np.isfinite(g_hat)) and np.abs(g_hat).max() > 0
    assert np.all(g_y == 0), "target features must be under stop_gradient"
    # Closed form: y_hat == y for sample 1, so its 1 - cos is 0.
    assert abs(1.0 - float(terms["id_logs"]["diff_target"][1])) < 1e-6


# ----------------------------------------------------------------------------- MoCo


@pytest.fixture(scope="module")
def moco():
    torch.manual_seed(1)
    net = randomize(TorchResNet50(), 2)
    sd = {f"module.encoder_q.{k}": v for k, v in numpy_sd(net).items()}
    # The rest of a MoCo v2 checkpoint (momentum encoder, queue): present, ignored.
    sd.update({"module.encoder_k.conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
               "module.queue": np.zeros((128, 16), np.float32),
               "module.queue_ptr": np.zeros((1,), np.int64)})
    variables, _ = moco_from_state_dict(sd, "torch-reference")
    trunk = tnn.Sequential(*list(net.children())[:-1]).eval()  # official: children[:-1]
    return net, trunk, variables


def test_moco_reference_is_the_official_layout(moco):
    net, _, _ = moco
    want = listing_shapes("moco_v2_800ep_resnet50.json", "keys_in_file_expected")
    want = {
        k[len("module.encoder_q.") :]: s
        for k, s in want.items()
        if k.startswith("module.encoder_q.")
    }
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == want


def test_moco_loss_matches_torch(moco, images):
    _, trunk, variables = moco
    y_hat, y, x = images

    def feats(t):  # official MocoLoss.extract_feats
        return F.normalize(trunk(F.interpolate(t, size=224)), dim=1).squeeze()

    with torch.no_grad():
        want = torch_pair_terms(feats(y_hat), feats(y), feats(x))
    check_losses(variables, "moco", LossWeights(moco=0.5), images, want)
