"""Image pipelines compared: the device-resident one (``on_device: true``) vs the decoded PIL loader.

Two figures per pipeline, each as the median and range over ``--repeats`` runs:

* images/s delivered: training batches drawn and made ready on the device (decode + augment +
  normalize for PIL; index gather + augment + normalize for on_device), no model;
* epoch time with ResNet-20 (SGD, Lightning ``fit`` of ``--batches`` training batches, no
  validation), from the first to the last training batch.

    python benchmarks/bench_data.py --root /path/to/cifar10-jpeg            # CPU
    python benchmarks/bench_data.py --root /path/to/cifar10-jpeg --device cuda --batches 0

``--root`` is a folder-per-class set of 32x32 images (``train``/``test``); ``--batches 0`` runs whole
epochs. The on_device cache is built before timing (its one-off decode time is printed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import pytorch_lightning as pl
import torch

from datamodules import ImageFolderDataModule
from models import ImageClassifier

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def datamodule(args: argparse.Namespace, on_device: bool, workers: int) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        args.root,
        train_split="train",
        test_split="test",
        image_size=32,
        transforms="cifar",
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        batch_size=args.batch_size,
        num_workers=workers,
        persistent_workers=False,
        on_device=on_device,
    )


def delivered(args: argparse.Namespace, on_device: bool, workers: int) -> float:
    """Images per second of ready training batches on ``args.device``."""
    dm = datamodule(args, on_device, workers)
    dm.setup("fit")
    device = torch.device(args.device)
    count, start = 0, None
    for i, batch in enumerate(dm.train_dataloader()):
        if i == 1:  # the first batch pays for worker start-up and the copy of the images to the device
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, count = time.perf_counter(), 0
        batch = (
            [t.to(device, non_blocking=True) for t in batch]
            if not on_device
            else batch._replace(indices=batch.indices.to(device))
        )
        x, _ = dm.on_after_batch_transfer(batch, 0) if on_device else batch
        count += len(x)
        if args.batches and i >= args.batches:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


class _EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.start = self.elapsed = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 1:
            self.start = time.perf_counter()
        if batch_idx >= 1:
            self.images += len(batch[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.elapsed = time.perf_counter() - self.start


def epoch(args: argparse.Namespace, on_device: bool, workers: int) -> tuple[float, float]:
    """(seconds, images/s) of one ResNet-20 training epoch (``args.batches`` batches), batch 2 on."""
    pl.seed_everything(0, verbose=False)
    timer = _EpochTimer()
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        max_epochs=1,
        limit_train_batches=args.batches or 1.0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    dm = datamodule(args, on_device, workers)
    model = ImageClassifier(
        num_classes=dm.num_classes,
        input_shape=dm.input_shape,
        arch="resnet20",
        norm=args.norm,
        schedule="constant",
        channels_last=args.channels_last,
    )
    trainer.fit(model, datamodule=dm)
    return timer.elapsed, timer.images / timer.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="training batches per measurement (0: whole epoch)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers of the PIL pipeline")
    parser.add_argument("--norm", default="l2bn")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    datamodule(args, True, 0).prepare_data()
    print(f"on_device uint8 cache ready in {time.perf_counter() - start:.1f} s (decoded once, then reused)")
    pipelines = [("on_device", True, 0)] + [(f"PIL, {w} workers", False, w) for w in args.workers]
    rows = []
    for name, on_device, workers in pipelines:
        rates = [delivered(args, on_device, workers) for _ in range(args.repeats)]
        epochs = [epoch(args, on_device, workers) for _ in range(args.repeats)]
        seconds = [e[0] for e in epochs]
        rows.append(
            {
                "pipeline": name,
                "delivered images/s": f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})",
                "ResNet-20 epoch s": f"{statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f})",
                "training images/s": f"{statistics.median(e[1] for e in epochs):,.0f}",
            }
        )
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"{args.batches or 'all'} batches, norm {args.norm}; median (min-max) over {args.repeats} runs"
    )
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
