r"""The embedded default: CPU runs on a seeded 16 px generator that need no downloaded weights.

The whole pipeline (train a W-encoder, train HyperStyle on its codes, invert held-out
images, edit them) is one command, `python -m hyperstyle_jax.demo --workdir workdirs/demo`,
which runs these stages in order:

    python -m hyperstyle_jax.train --config configs/tiny.py:w_encoder --workdir DIR/w_encoder
    python -m hyperstyle_jax.train --config configs/tiny.py:hyperstyle --workdir DIR/hyperstyle \
        --config.checkpoints.w_encoder=DIR/w_encoder/export

and the plain `python -m hyperstyle_jax.train --config configs/tiny.py --workdir DIR` is
the HyperStyle stage alone on the images' TRUE LATENTS (no W-encoder: iteration 0 is the
generator without offsets).

The data: a seeded random 16 px StyleGAN2 generator (3 resolutions of width 32, style_dim
64) renders 1024 training and 64 held-out images, each with its own random
multiplicative offsets on every non-toRGB conv weight (data.perturb_std), so no W code
reproduces them exactly: the W-encoder gets close, the hypernetwork's offsets the rest.
  w_encoder   a narrowed IR-SE W-encoder (input width 16, stages 32 and 64 wide, the
              official W head) trained with L2 on G(E(x) + latent_avg), Ranger lr 1e-3;
              prints the held-out L2 of its reconstructions and of the mean latent's image.
  hyperstyle  a small hypernetwork (ResNet stem 16 wide, two one-block stages, shared
              weight hypernet with z_dim 32) trained with the official step: 3 iterations
              per batch, L2 loss, Ranger lr 1e-3 (1e-4 officially; short run); prints the
              held-out L2 at iteration 0 and after each iteration.
LPIPS/ID/MoCo are off: they need pretrained networks.
"""
from hyperstyle_jax.training.config import base_config

STAGES = ("", "w_encoder", "hyperstyle")


def get_config(stage: str = ""):
    if stage not in STAGES:
        raise ValueError(f"configs/tiny.py:{stage}: the stages are 'w_encoder' and 'hyperstyle' "
                         "(none: HyperStyle on the true latents)")
    c = base_config()
    c.batch_size = 8
    c.eval_batch_size = 16
    c.log_every_steps = 20
    c.max_val_batches = 0             # the whole held-out split (64 images)
    c.loss.l2_lambda, c.loss.lpips_lambda = 1.0, 0.0
    c.optim.lr = 1e-3

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

    if stage == "w_encoder":
        c.task = "w_encoder"
        c.total_steps = 6000
        c.val_every_steps = 2000
        c.ckpt_every_steps = 2000
        # 16 px -> input layer 16 wide -> 8 px x 32 -> 4 px x 64 -> pool -> W head (64).
        c.w_encoder.input_width = 16
        c.w_encoder.stages = ((32, 1), (64, 1))
        return c

    c.n_iters_per_batch = 3
    c.total_steps = 3000
    c.val_every_steps = 1000
    c.ckpt_every_steps = 1000         # with each validation: orbax records val_loss
    c.w_code = "true_latent" if stage == "" else "encoder"
    # Layers 0..7 exist at 16 px; all 5 non-toRGB convs are 32 -> 32, so all use the
    # shared hypernet (in_size = out_size = 32). Features: 16 -> stem 8 -> 8 -> 4.
    c.model.hypernet = dict(stem_width=16, stages=((16, 1, 1), (32, 1, 2)),
                            hypernet_z_dim=32, hypernet_in_size=32, hypernet_out_size=32,
                            hyper_block_inner_c=32, refine_block_inner_c=32,
                            refine_block_out_c=32, spatial=4)
    return c
