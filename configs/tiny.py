r"""The embedded default: a 3-6 minute CPU demo that needs no downloaded weights.

    python -m hyperstyle_jax.train --config configs/tiny.py --workdir /tmp/hyperstyle_tiny

What it trains: a seeded random 16 px StyleGAN2 generator (3 resolutions of width 32)
renders synthetic images, each with its own random multiplicative offsets on every
non-toRGB conv weight (data.perturb_std). The initial W code is the TRUE LATENT of each
image (w_code='true_latent'): there is NO W-encoder in this run, so iteration 0 is the
generator without offsets, and only the offsets separate it from the target. A small
hypernetwork (ResNet stem 16 wide, two one-block stages, shared weight hypernet with
z_dim 32) learns to predict them with the official step: 3 iterations per batch, L2 loss,
Ranger. It ends by printing the held-out L2 at iteration 0 and after each iteration.
No converted checkpoints are needed (LPIPS/ID/MoCo are off: they need pretrained nets).
"""
from hyperstyle_jax.training.config import base_config


def get_config():
    c = base_config()
    c.batch_size = 8
    c.eval_batch_size = 16
    c.n_iters_per_batch = 3
    c.total_steps = 3000
    c.log_every_steps = 20
    c.val_every_steps = 1000
    c.max_val_batches = 0             # the whole held-out split (64 images)
    c.ckpt_every_steps = 1000         # with each validation: orbax records val_loss
    c.optim.lr = 1e-3
    c.loss.l2_lambda, c.loss.lpips_lambda = 1.0, 0.0
    c.w_code = "true_latent"

    c.data.source = "synthetic"
    c.data.generator = dict(size=16, style_dim=64, n_mlp=2,
                            channels=((4, 32), (8, 32), (16, 32)),
                            lr_mlp=0.01, blur_kernel=(1, 3, 3, 1))
    c.data.num_train = 1024
    c.data.num_eval = 64
    c.data.perturb_std = 0.2
    c.data.perturb_mode = "in"         # one offset per input channel of each layer (an
                                       # output-channel factor would be demodulated away)
    c.data.perturb_layers = ""         # every non-toRGB conv: 0, 2, 3, 5, 6
    c.data.seed = 0

    c.model.feedback_hw = (16, 16)
    c.model.per_sample = "loop"        # fastest per-sample conv for these tiny shapes on CPU
    # Layers 0..7 exist at 16 px; all 5 non-toRGB convs are 32 -> 32, so all use the
    # shared hypernet (in_size = out_size = 32). Features: 16 -> stem 8 -> 8 -> 4.
    c.model.hypernet = dict(stem_width=16, stages=((16, 1, 1), (32, 1, 2)),
                            hypernet_z_dim=32, hypernet_in_size=32, hypernet_out_size=32,
                            hyper_block_inner_c=32, refine_block_inner_c=32,
                            refine_block_out_c=32, spatial=4)
    return c
