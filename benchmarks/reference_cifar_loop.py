"""A Lightning-free control for the CIFAR factor ablation (docs/results.md): a plain PyTorch loop.

Trains this project's CIFAR ResNet (the model and the norm layer are shared, so only the training
pipeline differs) the way a minimal script does: every image decoded once into one uint8 tensor, random
crop (padding 4: black by default; ``--padding-mode``, ``--pad-fill mean``) and horizontal flip,
per-channel normalization, SGD with Nesterov momentum and one-cycle, all training images, the last
weights tested on the test split. Each choice the project's pipeline makes differently is a switch, so a
gap between this loop and the ``l2bn ablation`` cell with the same settings points at what the switches
do not cover.

    python benchmarks/reference_cifar_loop.py --root data/cifar10-jpeg --norm l2bn --seed 0 --out runs/loop.csv

Defaults are the outside review's script (issue 12): option-A shortcuts, PyTorch's default conv
init, weight decay on every parameter, one crop offset per batch, 25% warm-up, momentum fixed at 0.9,
std (0.2023, 0.1994, 0.2010). Appends one row (settings, test accuracy, seconds) to ``--out``.
Folder layout: ``<root>/{train,test}/<class>/*.jpg`` (the shared CIFAR-10 JPEG copy).

    python benchmarks/reference_cifar_loop.py --summarize runs/loop.csv [more.csv ...]

prints one row per setting: each norm's mean test accuracy and the L2BN - BN difference paired by
seed with its 95% Student-t interval (the sweep's).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from l2bn_lit.nn import get_norm_layer
from l2bn_lit.nn.init import initialize
from l2bn_lit.reports.stats import paired_differences
from models.cifar_resnet import resnet20

MEAN = (0.4914, 0.4822, 0.4465)
RESULT_COLUMNS = ("norm", "seed", "test_acc", "seconds")


def load_split(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images (N, 3, H, W), int64 labels (N,))`` of a folder-per-class split."""
    dataset = ImageFolder(str(folder))
    images = torch.stack([decode_image(read_file(path), ImageReadMode.RGB) for path, _ in dataset.samples])
    return images, torch.tensor(dataset.targets)


def augment(images: torch.Tensor, per_batch: bool, padding: int = 4, padding_mode: str = "constant") -> torch.Tensor:
    """Random crop of the padded images (torchvision's ``padding_mode``; ``constant`` pads with 0) and a
    per-sample horizontal flip; ``(B, C, H, W)``, uint8 or normalized."""
    batch, _, height, width = images.shape
    padded = v2.functional.pad(images, [padding], fill=0, padding_mode=padding_mode)
    offsets = torch.randint(0, 2 * padding + 1, (1 if per_batch else batch, 2)).tolist()
    if per_batch:
        top, left = offsets[0]
        cropped = padded[:, :, top : top + height, left : left + width]
    else:
        cropped = torch.stack([padded[i, :, t : t + height, x : x + width] for i, (t, x) in enumerate(offsets)])
    flip = torch.rand(batch) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def train_inputs(images: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """A uint8 training batch, augmented and normalized: padded before normalizing, except constant
    padding with ``--pad-fill mean`` (after normalizing, with 0)."""
    per_batch = args.crop == "batch"
    if args.pad_fill == "mean":
        return augment(normalize(images, args.std), per_batch, padding_mode=args.padding_mode)
    return normalize(augment(images, per_batch, padding_mode=args.padding_mode), args.std)


def normalize(images: torch.Tensor, std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 ``(x / 255 - mean) / std``."""
    mean_t, std_t = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


def optimizer_for(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.SGD:
    """SGD over every parameter at ``weight_decay``, or without decay on 1-d parameters (norm weights
    and biases) with ``--no-decay-1d``."""
    if args.no_decay_1d:
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": args.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": list(model.parameters()), "weight_decay": args.weight_decay}]
    return torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)  # OneCycleLR sets the lr


def summarize(runs: pd.DataFrame, norms: tuple[str, str] = ("bn", "l2bn")) -> pd.DataFrame:
    """One row per distinct setting of ``runs`` (the rows ``--out`` collects), labelled by the settings
    that differ between rows: each norm's mean test accuracy and ``norms[1] - norms[0]`` paired by
    seed (mean, 95% interval), in points."""
    settings = [c for c in runs.columns if c not in RESULT_COLUMNS]
    varying = [c for c in settings if runs[c].astype(str).nunique() > 1] or settings  # the label names these
    rows = []
    for values, group in runs.groupby(settings, sort=False):
        gap = paired_differences(group, ["test_acc"], list(norms)).iloc[0]
        means = group.groupby("norm")["test_acc"].mean()
        label = " ".join(f"{k}={v}" for k, v in zip(settings, values) if k in varying)
        rows.append(
            {
                "settings": label,
                "pairs": gap["pairs"],
                **{norm: round(means[norm], 4) for norm in norms},
                f"{norms[1]} - {norms[0]}, points": round(100 * gap["mean"], 2),
                "95% CI": "—" if gap["pairs"] < 2 else f"({100 * gap['ci low']:+.2f}, {100 * gap['ci high']:+.2f})",
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summarize", type=Path, nargs="+", help="tabulate these --out files instead of training")
    parser.add_argument("--root", type=Path, help="folder with train/ and test/ class folders")
    parser.add_argument("--norm", default="l2bn", help="a norm name of l2bn_lit.nn.get_norm_layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.2, help="the one-cycle peak")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--no-decay-1d", action="store_true", help="no weight decay on norm weights and biases")
    parser.add_argument("--shortcut", choices=("A", "B"), default="A")
    parser.add_argument("--init", choices=("torch", "arch"), default="torch")
    parser.add_argument("--crop", choices=("batch", "sample"), default="batch")
    parser.add_argument("--pct-start", type=float, default=0.25)
    parser.add_argument("--cycle-momentum", action="store_true", help="cycle momentum 0.85-0.95 (torch's default)")
    parser.add_argument("--std", type=float, nargs=3, default=(0.2023, 0.1994, 0.2010))
    parser.add_argument("--padding-mode", choices=("constant", "edge", "reflect", "symmetric"), default="constant")
    parser.add_argument(
        "--pad-fill",
        choices=("black", "mean"),
        default="black",
        help="constant padding: black before normalizing (torchvision's RandomCrop before Normalize) "
        "or 0 after it (the mean colour)",
    )
    parser.add_argument("--out", type=Path, help="CSV file to append the result row to")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(pd.concat([pd.read_csv(path) for path in args.summarize])).to_markdown(index=False))
        return
    if args.root is None or args.out is None:
        parser.error("training needs --root and --out")
    if args.pad_fill == "mean" and args.padding_mode != "constant":
        parser.error("--pad-fill mean fills constant padding: use it with --padding-mode constant")

    train_x, train_y = load_split(args.root / "train")
    test_x, test_y = load_split(args.root / "test")
    torch.manual_seed(args.seed)
    model = initialize(resnet20(10, get_norm_layer(args.norm), shortcut=args.shortcut), args.init)
    optimizer = optimizer_for(model, args)
    steps_per_epoch = len(train_x) // args.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        args.lr,
        total_steps=args.epochs * steps_per_epoch,
        pct_start=args.pct_start,
        cycle_momentum=args.cycle_momentum,
    )
    started = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            inputs = train_inputs(train_x[index], args)
            loss = F.cross_entropy(model(inputs), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(normalize(test_x[i : i + 1000], args.std)).argmax(1) == test_y[i : i + 1000]).sum().item()
            for i in range(0, len(test_x), 1000)
        )
    row = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k not in ("root", "out")}
    row |= {"test_acc": correct / len(test_x), "seconds": round(time.perf_counter() - started)}
    print(row)
    pd.DataFrame([row]).to_csv(args.out, mode="a", header=not args.out.exists(), index=False)


if __name__ == "__main__":
    main()
