r"""Cars (a non-face domain): train the W-encoder for HyperStyle; the template for a new domain.

The official `WEncoder` (IR-SE-50 + the W head, 16 layers at 512 px), body initialised
from ArcFace IR-SE-50 (pSp/e4e do so for every domain), trained on Stanford Cars with
the non-face losses on the official cars band of G(w + latent_avg) (rows 64:448 of 512,
pooled to 192x256, the size the encoder sees): L2 1.0 + LPIPS 0.8 + MoCo 0.5; Ranger
lr 1e-4, batch 8.

Converted checkpoints (tools/convert_weights.py):
    python tools/convert_weights.py stylegan2 stylegan2-car-config-f.pt ckpt/stylegan2_cars
    python tools/convert_weights.py arcface model_ir_se50.pth ckpt/arcface_ir_se50
    python tools/convert_weights.py lpips alexnet-owt-7be5be79.pth alex.pth ckpt/lpips_alex
    python tools/convert_weights.py moco moco_v2_800ep_pretrain.pt ckpt/moco_v2
Data:
    python -m hyperstyle_jax.data.build --dataset stanford_cars --source /data/stanford_cars \
        --data_dir /data/tfds
Train (writes /ckpt/w_encoder_cars/export, a converted w_encoder folder):
    python -m hyperstyle_jax.train --config configs/w_encoder_cars.py \
        --workdir /ckpt/w_encoder_cars --config.data.data_dir=/data/tfds
Then HyperStyle on its codes:
    python -m hyperstyle_jax.train --config configs/cars.py --workdir /ckpt/hyperstyle_cars \
        --config.checkpoints.w_encoder=/ckpt/w_encoder_cars/export --config.data.data_dir=/data/tfds

Your own domain (a folder of images and a StyleGAN2 trained on them, rosinality format):
    python tools/convert_weights.py stylegan2 my_stylegan2.pt ckpt/stylegan2_mine
    python -m hyperstyle_jax.data.build --dataset image_folder --source /data/mine \
        --split_by ratio --test_fraction 0.05 --data_dir /data/tfds
    python -m hyperstyle_jax.train --config configs/w_encoder_cars.py \
        --workdir /ckpt/w_encoder_mine \
        --config.data.data_dir=/data/tfds --config.data.name=image_folder \
        --config.data.eval_name= --config.checkpoints.generator=ckpt/stylegan2_mine \
        --config.model.feedback_hw='(256, 256)' --config.model.cars_crop=False
(square images: no cars crop; the W head and n_styles follow the generator's size).
"""
from hyperstyle_jax.training.config import base_config


def get_config():
    c = base_config()
    c.task = "w_encoder"
    c.loss.l2_lambda, c.loss.lpips_lambda, c.loss.moco_lambda = 1.0, 0.8, 0.5
    c.data.source = "tfds"
    c.data.name, c.data.eval_name, c.data.eval_split = "stanford_cars", "", "test"
    c.model.feedback_hw = (192, 256)
    c.model.cars_crop = True
    c.checkpoints.generator = "ckpt/stylegan2_cars"
    c.checkpoints.lpips = "ckpt/lpips_alex"
    c.checkpoints.moco = "ckpt/moco_v2"
    c.w_encoder.backbone_init = "ckpt/arcface_ir_se50"
    return c
