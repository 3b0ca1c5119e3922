"""The official HyperStyle side of benchmarks/compare_official.py (run by the official
venv's python, cwd = a work folder; never imports hyperstyle_jax).

    python official_side.py make  --repo R --size 256 --n_iters 5 --seed 0
        -> random full-width checkpoints in the cwd: stylegan2_random.pt (rosinality
           {'g_ema', 'latent_avg'}), w_encoder_random.pt (pSp format), hyperstyle_random.pt
           (Coach.__get_save_dict format), built along the official from-scratch path
    python official_side.py serve --repo R --n_iters 5
        -> loads hyperstyle_random.pt with the official utils.model_utils.load_model, prints
           READY, then answers stdin lines `run IN.npy OUT.npy` (x [B, 3, H, W] in [-1, 1])
           with `TIME <seconds>` for one official run_inversion under no_grad (final pooled
           images saved to OUT.npy); `quit` ends.

CPU patches applied in this process only (the official sources are not edited; the two
CUDA ops are replaced on disk by compare_official.py with benchmarks/official_ops/):
`.cuda()` is the identity; torchvision's resnet34 ignores `pretrained` (no download);
`model_paths['e4e_w_encoder']` aliases `faces_w_encoder` (TrainOptions' KeyError);
`model_paths['resnet34']` points at a random torchvision ResNet-34 saved by `make`.
"""
import argparse
import os
import sys
import time


def patch(repo: str):
    import torch
    import torchvision

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    orig = torchvision.models.resnet.resnet34

    def resnet34(*a, **k):
        return orig(weights=None)
    torchvision.models.resnet.resnet34 = resnet34
    torchvision.models.resnet34 = resnet34
    sys.path.insert(0, repo)
    from configs import paths_config
    paths_config.model_paths.setdefault("e4e_w_encoder",
                                        paths_config.model_paths.get("faces_w_encoder", ""))
    torch.set_grad_enabled(False)
    return torch


def train_opts(size: int, n_iters: int, w_encoder: str, stylegan: str):
    from options.train_options import TrainOptions
    argv = ["--dataset_type=ffhq_hypernet", "--encoder_type=SharedWeightsHyperNetResNet",
            f"--output_size={size}", "--load_w_encoder", f"--w_encoder_checkpoint_path={w_encoder}",
            f"--stylegan_weights={stylegan}", f"--n_iters_per_batch={n_iters}", "--exp_dir=exp"]
    opts = TrainOptions().parser.parse_args(argv)
    opts.device = "cpu"
    return opts


def make(args):
    torch = patch(args.repo)
    from argparse import Namespace

    from models.encoders.w_encoder import WEncoder
    from models.hyperstyle import HyperStyle
    from models.stylegan2.model import Generator

    torch.manual_seed(args.seed)
    n_styles = 2 * (args.size.bit_length() - 1) - 2
    g = Generator(args.size, 512, 8, channel_multiplier=2)
    with torch.no_grad():  # a random generator with a plausible mean latent
        latent_avg = g.mean_latent(4096)[0]
    torch.save({"g_ema": g.state_dict(), "latent_avg": latent_avg}, "stylegan2_random.pt")

    wopts = Namespace(output_size=args.size, n_styles=n_styles, input_nc=3)
    enc = WEncoder(50, "ir_se", wopts)
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in g.state_dict().items()})
    torch.save({"state_dict": sd, "latent_avg": latent_avg.repeat(n_styles, 1),
                "opts": {"output_size": args.size, "encoder_type": "WEncoder", "input_nc": 3,
                         "n_styles": n_styles}}, "w_encoder_random.pt")

    opts = train_opts(args.size, args.n_iters, os.path.abspath("w_encoder_random.pt"),
                      os.path.abspath("stylegan2_random.pt"))
    # The from-scratch path reads ImageNet ResNet-34 weights (model_paths['resnet34']); a
    # random torchvision ResNet-34 in its place keeps the same keys and shapes, no download.
    import torchvision
    from configs.paths_config import model_paths
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), "resnet34_random.pth")
    model_paths["resnet34"] = os.path.abspath("resnet34_random.pth")
    net = HyperStyle(opts)
    # Realistic offsets (|delta| ~ 0.05) rather than the huge ones of untrained blocks: the
    # same scaling benchmarks/invert.py applies to our random hypernet.
    for name, p in net.hypernet.named_parameters():
        if p.ndim == 1:
            p.data.mul_(1e-3)
    sd = {k: v for k, v in net.state_dict().items() if "w_encoder" not in k}
    torch.save({"state_dict": sd, "opts": vars(opts), "latent_avg": net.latent_avg,
                "global_step": 0, "best_val_loss": None}, "hyperstyle_random.pt")
    print("MADE", flush=True)


def serve(args):
    torch = patch(args.repo)
    import numpy as np
    from utils.inference_utils import run_inversion
    from utils.model_utils import load_model

    torch.set_num_threads(args.threads or os.cpu_count())
    net, opts = load_model(os.path.abspath("hyperstyle_random.pt"), device="cpu",
                           update_opts={"n_iters_per_batch": args.n_iters,
                                        "resize_outputs": False,
                                        "w_encoder_checkpoint_path":
                                            os.path.abspath("w_encoder_random.pt")})
    net.eval()
    print("READY", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        x = torch.from_numpy(np.load(parts[1])).float()
        t0 = time.perf_counter()
        with torch.no_grad():
            y_hat, _, _, _ = run_inversion(x, net, opts)
        dt = time.perf_counter() - t0
        np.save(parts[2], y_hat.numpy())
        print(f"TIME {dt:.4f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("make", "serve"))
    p.add_argument("--repo", required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n_iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    (make if args.what == "make" else serve)(args)


if __name__ == "__main__":
    main()
