r"""Faces: the official paper recipe (README:172-192), FFHQ train / CelebA-HQ test, 1024 px.

Converted checkpoints it needs (tools/convert_weights.py; files from the official README):
    python tools/convert_weights.py stylegan2 stylegan2-ffhq-config-f.pt ckpt/stylegan2_ffhq
    python tools/convert_weights.py w_encoder faces_w_encoder.pt ckpt/w_encoder_faces
    python tools/convert_weights.py resnet34 resnet34-333f7ec4.pth ckpt/resnet34
    python tools/convert_weights.py lpips alexnet-owt-7be5be79.pth alex.pth ckpt/lpips_alex
    python tools/convert_weights.py arcface model_ir_se50.pth ckpt/arcface_ir_se50
Data (TFDS array_record, no TensorFlow):
    python -m hyperstyle_jax.data.build --dataset ffhq --source /data/ffhq --data_dir /data/tfds
    python -m hyperstyle_jax.data.build --dataset celeba_hq --source /data/CelebA-HQ-img \
        --file_list celeba_hq_test_files.txt --data_dir /data/tfds
Train:
    python -m hyperstyle_jax.train --config configs/ffhq.py --workdir /ckpt/hyperstyle_ffhq \
        --config.data.data_dir=/data/tfds
Fine-tune from the official model instead of ImageNet init (--config.init_from):
    python tools/convert_weights.py hyperstyle hyperstyle_ffhq.pt ckpt/hyperstyle_ffhq
    ... --config.init_from=ckpt/hyperstyle_ffhq
The method summary's image discriminator (off, as in base_config; D from the generator's
file, resized inputs when its size differs from the 256 px data):
    python tools/convert_weights.py discriminator stylegan2-ffhq-config-f.pt ckpt/d_ffhq
    ... --config.loss.adv_lambda=0.1 --config.discriminator.init=ckpt/d_ffhq

Recipe: batch 8, 5 iterations per batch, L2 1.0 + LPIPS 0.8 + ID 0.1, Ranger lr 1e-4, the
default layers_to_tune, validation every 5000 steps on 150 batches, checkpoint every 10000.
"""
from hyperstyle_jax.training.config import base_config


def get_config():
    c = base_config()
    c.loss.l2_lambda, c.loss.lpips_lambda, c.loss.id_lambda = 1.0, 0.8, 0.1
    c.data.source = "tfds"
    c.data.name, c.data.eval_name, c.data.eval_split = "ffhq", "celeba_hq", "test"
    c.checkpoints.generator = "ckpt/stylegan2_ffhq"
    c.checkpoints.w_encoder = "ckpt/w_encoder_faces"
    c.checkpoints.resnet34 = "ckpt/resnet34"
    c.checkpoints.lpips = "ckpt/lpips_alex"
    c.checkpoints.arcface = "ckpt/arcface_ir_se50"
    return c
