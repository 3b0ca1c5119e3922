r"""Faces: train the W-encoder HyperStyle starts from (the official repo needs e4e for this).

The encoder is the official `WEncoder` (IR-SE-50 + the W head, one w for all 18 layers,
added to latent_avg), its body initialised from ArcFace IR-SE-50 as pSp/e4e do, trained on
FFHQ (validated on CelebA-HQ test) with e4e's faces losses on G(w + latent_avg) pooled to
256: L2 1.0 + LPIPS 0.8 + ID 0.1; Ranger lr 1e-4, batch 8.

Converted checkpoints (tools/convert_weights.py; files from the official READMEs):
    python tools/convert_weights.py stylegan2 stylegan2-ffhq-config-f.pt ckpt/stylegan2_ffhq
    python tools/convert_weights.py arcface model_ir_se50.pth ckpt/arcface_ir_se50
    python tools/convert_weights.py lpips alexnet-owt-7be5be79.pth alex.pth ckpt/lpips_alex
Data (TFDS array_record, no TensorFlow):
    python -m hyperstyle_jax.data.build --dataset ffhq --source /data/ffhq --data_dir /data/tfds
    python -m hyperstyle_jax.data.build --dataset celeba_hq --source /data/CelebA-HQ-img \
        --file_list celeba_hq_test_files.txt --data_dir /data/tfds
Train (writes /ckpt/w_encoder_ffhq/export, a converted w_encoder folder):
    python -m hyperstyle_jax.train --config configs/w_encoder_ffhq.py \
        --workdir /ckpt/w_encoder_ffhq --config.data.data_dir=/data/tfds
The optional terms (off here, as in base_config): e4e's latent discriminator and the
W-mean regulariser (squared distance of w to latent_avg):
    ... --config.w_encoder.disc_lambda=0.1 --config.w_encoder.w_norm_lambda=1e-3
Then HyperStyle on its codes, and inversion with it, exactly as with the official file:
    python -m hyperstyle_jax.train --config configs/ffhq.py --workdir /ckpt/hyperstyle_ffhq \
        --config.checkpoints.w_encoder=/ckpt/w_encoder_ffhq/export --config.data.data_dir=/data/tfds
    python -m hyperstyle_jax.invert --checkpoint /ckpt/hyperstyle_ffhq/export \
        --w_encoder /ckpt/w_encoder_ffhq/export --images photos/ --out out/
Fine-tune the official encoder instead (convert_weights.py w_encoder faces_w_encoder.pt
ckpt/faces_w_encoder):
    ... --config.w_encoder.backbone_init= --config.w_encoder.init_from=ckpt/faces_w_encoder
"""
from hyperstyle_jax.training.config import base_config


def get_config():
    c = base_config()
    c.task = "w_encoder"
    c.loss.l2_lambda, c.loss.lpips_lambda, c.loss.id_lambda = 1.0, 0.8, 0.1
    c.data.source = "tfds"
    c.data.name, c.data.eval_name, c.data.eval_split = "ffhq", "celeba_hq", "test"
    c.checkpoints.generator = "ckpt/stylegan2_ffhq"
    c.checkpoints.lpips = "ckpt/lpips_alex"
    c.checkpoints.arcface = "ckpt/arcface_ir_se50"
    c.w_encoder.backbone_init = "ckpt/arcface_ir_se50"
    return c
