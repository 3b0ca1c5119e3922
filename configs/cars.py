r"""Cars: the official recipe for Stanford Cars (README:198-201), 512x384 generator.

Converted checkpoints it needs (tools/convert_weights.py; files from the official README):
    python tools/convert_weights.py stylegan2 stylegan2-car-config-f.pt ckpt/stylegan2_cars
    python tools/convert_weights.py w_encoder cars_w_encoder.pt ckpt/w_encoder_cars
    python tools/convert_weights.py resnet34 resnet34-333f7ec4.pth ckpt/resnet34
    python tools/convert_weights.py lpips alexnet-owt-7be5be79.pth alex.pth ckpt/lpips_alex
    python tools/convert_weights.py moco moco_v2_800ep_pretrain.pt ckpt/moco_v2
Data:
    python -m hyperstyle_jax.data.build --dataset stanford_cars --source /data/stanford_cars \
        --data_dir /data/tfds
Train:
    python -m hyperstyle_jax.train --config configs/cars.py --workdir /ckpt/hyperstyle_cars \
        --config.data.data_dir=/data/tfds
Fine-tune: --config.init_from=ckpt/hyperstyle_cars (from `convert_weights.py hyperstyle
hyperstyle_cars.pt ckpt/hyperstyle_cars`).

Recipe: batch 8, 5 iterations, L2 1.0 + LPIPS 0.8 + MoCo 0.5 (no ID), Ranger lr 1e-4,
default layers_to_tune; images and feedback at 192x256 (the 384-row band of the 512x512
output, official crop).
"""
from hyperstyle_jax.training.config import base_config


def get_config():
    c = base_config()
    c.loss.l2_lambda, c.loss.lpips_lambda, c.loss.moco_lambda = 1.0, 0.8, 0.5
    c.data.source = "tfds"
    c.data.name, c.data.eval_name, c.data.eval_split = "stanford_cars", "", "test"
    c.model.feedback_hw = (192, 256)
    c.model.cars_crop = True
    c.checkpoints.generator = "ckpt/stylegan2_cars"
    c.checkpoints.w_encoder = "ckpt/w_encoder_cars"
    c.checkpoints.resnet34 = "ckpt/resnet34"
    c.checkpoints.lpips = "ckpt/lpips_alex"
    c.checkpoints.moco = "ckpt/moco_v2"
    return c
