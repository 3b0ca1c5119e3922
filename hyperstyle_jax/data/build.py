"""Build a HyperStyle dataset as TFDS array_record files from a local folder (offline).

    python -m hyperstyle_jax.data.build --dataset ffhq --source /data/ffhq/images1024x1024 \\
        --data_dir /data/tfds
    python -m hyperstyle_jax.data.build --dataset celeba_hq \\
        --source /data/CelebAMask-HQ/CelebA-HQ-img \\
        --file_list /data/celeba_hq_test_files.txt --data_dir /data/tfds
    python -m hyperstyle_jax.data.build --dataset image_folder --source /data/my_photos \\
        --split_by ratio --test_fraction 0.05 --data_dir /data/tfds

Unreadable, empty and non-image files are skipped, each named on stderr and listed in
`<data_dir>/<dataset>/build_report.txt`; images that are not 8-bit RGB are converted and
stored as lossless PNG. One summary line ends the run. Nothing is downloaded and no
TensorFlow is needed.

Exit status: 0 = built, no file skipped; 1 = built, some files skipped (see the report);
2 = not built.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

from hyperstyle_jax.data.builders import BUILDERS, BuildReport, get_builder_class
from hyperstyle_jax.utils import cli


def report_path(data_dir: str, dataset: str) -> str:
    return os.path.join(data_dir, dataset, "build_report.txt")


def build_dataset(dataset: str, source: str, data_dir: str, *, file_list: str | None = None,
                  split_by: str = "auto", test_fraction: float = 0.1, split_seed: int = 0,
                  overwrite: bool = False, progress: bool = True) -> BuildReport:
    """Build `dataset` from the folder `source` into `data_dir`; returns the report.

    The report is also written to `report_path(data_dir, dataset)`. Raises if the dataset
    cannot be built (missing folder, a split with no readable image, ...).
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415  imported only when building

    cls = get_builder_class(dataset)
    if not os.path.isdir(source):
        raise FileNotFoundError(f"--source {source}: not a folder")
    kwargs = {}
    if dataset == "celeba_hq":
        kwargs["file_list"] = file_list
    elif file_list:
        raise ValueError(f"--file_list is only for celeba_hq, not {dataset}")
    if dataset == "image_folder":
        kwargs.update(split_by=split_by, test_fraction=test_fraction, split_seed=split_seed)
    builder = cls(data_dir=data_dir, file_format="array_record", **kwargs)
    builder.progress = progress
    if os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")) and not overwrite:
        raise FileExistsError(
            f"{dataset} already built in {builder.data_dir}; pass --overwrite to rebuild it")
    mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    tfds.disable_progress_bar()  # ours has a total; TFDS's would count blindly
    header = [f"# {dataset} build {datetime.datetime.now().isoformat(timespec='seconds')}",
              f"# source: {os.path.abspath(source)}",
              f"# output: {builder.data_dir}"]
    if file_list:
        header.append(f"# file_list: {os.path.abspath(file_list)}")
    path = report_path(data_dir, dataset)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.abspath(source), download_mode=mode))
    except BaseException as e:  # keep what was learnt about the files, then re-raise
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(builder.report.to_text(dataset, header + [f"# FAILED: {e!r}"]))
        raise
    try:  # TFDS leaves an empty <data_dir>/downloads/extracted behind; nothing was downloaded
        os.removedirs(os.path.join(data_dir, "downloads", "extracted"))
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(builder.report.to_text(dataset, header))
    return builder.report


def main(argv=None) -> int:
    """The command line; a build that cannot start or finish is one line (`cli.run`)."""
    return cli.run(_main, argv)


def _main(argv) -> int:
    p = argparse.ArgumentParser(
        prog="python -m hyperstyle_jax.data.build",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(BUILDERS),
                   help="which builder (sets the splits and the expected folder layout)")
    p.add_argument("--source", required=True,
                   help="local folder with the images (TFDS manual_dir); never downloaded")
    p.add_argument("--data_dir", required=True,
                   help="TFDS data dir to write <dataset>/<version>/*.array_record into")
    p.add_argument("--file_list", default=None,
                   help="celeba_hq: text file naming the test images, one per line "
                        "(file name with or without extension, or relative path)")
    p.add_argument("--split_by", default="auto", choices=("auto", "folders", "ratio"),
                   help="image_folder: sub-folders as splits, or a seeded ratio split")
    p.add_argument("--test_fraction", type=float, default=0.1,
                   help="image_folder with --split_by ratio: share of images in 'test'")
    p.add_argument("--split_seed", type=int, default=0,
                   help="image_folder with --split_by ratio: seed of the split")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild even if the dataset is already in --data_dir")
    args = p.parse_args(argv)
    try:
        report = build_dataset(args.dataset, args.source, args.data_dir,
                               file_list=args.file_list, split_by=args.split_by,
                               test_fraction=args.test_fraction, split_seed=args.split_seed,
                               overwrite=args.overwrite)
    except (OSError, ValueError) as e:
        seen = report_path(args.data_dir, args.dataset)
        seen = f" (files seen so far: {seen})" if os.path.exists(seen) else ""
        raise cli.UserError(" ".join(str(e).split()) + seen) from e
    for split, path, reason in report.skipped:
        print(f"skipped {split}: {path}: {reason}", file=sys.stderr)
    print(report.summary(args.dataset) + f"; report: {report_path(args.data_dir, args.dataset)}")
    return 1 if report.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
