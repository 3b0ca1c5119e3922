r"""AFHQ Wild: the official recipe for non-face domains (README:198-201), 512 px generator.

Converted checkpoints it needs (tools/convert_weights.py; files from the official README):
    python tools/convert_weights.py stylegan2 afhqwild.pt ckpt/stylegan2_afhq_wild
    python tools/convert_weights.py w_encoder afhq_wild_w_encoder.pt ckpt/w_encoder_afhq_wild
    python tools/convert_weights.py resnet34 resnet34-333f7ec4.pth ckpt/resnet34
    python tools/convert_weights.py lpips alexnet-owt-7be5be79.pth alex.pth ckpt/lpips_alex
    python tools/convert_weights.py moco moco_v2_800ep_pretrain.pt ckpt/moco_v2
Data:
    python -m hyperstyle_jax.data.build --dataset afhq_wild --source /data/afhq \
        --data_dir /data/tfds
Train:
    python -m hyperstyle_jax.train --config configs/afhq_wild.py \
        --workdir /ckpt/hyperstyle_afhq_wild --config.data.data_dir=/data/tfds
Fine-tune: --config.init_from=ckpt/hyperstyle_afhq_wild (from `convert_weights.py
hyperstyle hyperstyle_afhq_wild.pt ckpt/hyperstyle_afhq_wild`).

Recipe: batch 8, 5 iterations, L2 1.0 + LPIPS 0.8 + MoCo 0.5 (no ID), Ranger lr 1e-4,
default layers_to_tune, validation every 5000 steps, checkpoint every 10000.
"""
from hyperstyle_jax.training.config import base_config


def get_config():
    c = base_config()
    c.loss.l2_lambda, c.loss.lpips_lambda, c.loss.moco_lambda = 1.0, 0.8, 0.5
    c.data.source = "tfds"
    c.data.name, c.data.eval_name, c.data.eval_split = "afhq_wild", "", "test"
    c.checkpoints.generator = "ckpt/stylegan2_afhq_wild"
    c.checkpoints.w_encoder = "ckpt/w_encoder_afhq_wild"
    c.checkpoints.resnet34 = "ckpt/resnet34"
    c.checkpoints.lpips = "ckpt/lpips_alex"
    c.checkpoints.moco = "ckpt/moco_v2"
    return c
