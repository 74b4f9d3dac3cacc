"""One prepared GPU check: the CUDA tests, the layer and training-step benchmarks, and a BN vs L2BN
CIFAR-10 comparison on the device-resident pipeline, written as one Markdown report.

    python benchmarks/gpu_check.py --data ../shared/data/cifar10-jpeg.tar.gz --wheels .whl --report results/gpu_check.md
    python benchmarks/gpu_check.py --device cpu --quick          # the CPU path (about two minutes here; CI runs it)

Sections run in order of importance, each in its own process with its own time limit, and the
report is rewritten after each one, so a run stopped early still leaves what it measured. Modules
the machine lacks (jsonargparse for LightningCLI, soundfile) are named and installed from
``--wheels`` (a folder of wheels, ``pip install --no-index --target``) when given.

CIFAR-10 comparison, the one-GPU recipe: ``configs/cifar10jpeg_resnet20_gpu.yaml`` (ResNet-20, batch 512,
one-cycle, channels_last, bf16 autocast, on_device data, the fused kernels) through ``l2bn sweep`` with
``--seeds`` per arm, ``--parallel`` runs sharing the GPU, then per run its test accuracy, images/s and
training seconds to 90% validation accuracy (:func:`recipe_table`); ``--data`` is the folder-per-class JPEG
copy (``{train,test}/<class>/*.jpg``) or its ``.tar.gz``. Without ``--data`` (or with ``--quick``) a small
synthetic JPEG set stands in. ``--padding black reflect`` runs the comparison once per padding of the random
crop (``l2bn ablation``, one cell each: issue 21's black vs the best other mode); it doubles the section's runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the random crop's padding: the CLI options of each (the image datamodules' ``pad_fill``, ``padding_mode``)
PADDINGS = {
    "black": [],
    "mean": ["--data.init_args.pad_fill", "mean"],
    "reflect": ["--data.init_args.padding_mode", "reflect"],
}
NEEDED = {
    "jsonargparse": "LightningCLI (the sweep's runs, the quickstart test)",
    "soundfile": "the audio datamodules' WAV reader",
}


def install_missing(wheels: str | None, site: Path) -> list[str]:
    """Names the missing modules and installs them from ``wheels``; returns report lines."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    lines = [f"- missing: {name} ({NEEDED[name]})" for name in missing] or ["- nothing missing"]
    if missing and wheels:
        files = sorted(str(p) for p in Path(wheels).glob("*.whl"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--target",
                str(site),
                *files,
            ],
            check=True,
        )
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ["PYTHONPATH"]])
        lines.append(f"- installed from {wheels}: {', '.join(Path(f).name for f in files)}")
    elif missing:
        lines.append("- pass --wheels FOLDER to install them; the sections that need them will fail")
    return lines


def image_folder(data: str | None, work: Path, quick: bool) -> Path:
    """The folder-per-class JPEG set: ``data`` (a folder or a .tar.gz, extracted into ``work``), or a
    small synthetic one."""
    if data and not quick:
        path = Path(data)
        if path.is_dir():
            return path
        with tarfile.open(path) as tar:
            top = tar.getmembers()[0].name.split("/")[0]
            if not (work / top).is_dir():
                tar.extractall(work, filter="data")
        return work / top
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = work / "synthetic-jpeg"
    for split, count in (("train", 40), ("test", 10)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(rng.normal(25 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg")
    return root


class Report:
    """The Markdown report, rewritten after each section."""

    def __init__(self, path: Path, header: list[str], budget: float) -> None:
        self.path, self.lines = path, header
        self.deadline = time.perf_counter() + budget

    def section(self, title: str, command: list[str], timeout: float, keep: int = 60) -> int:
        left = self.deadline - time.perf_counter()
        if left < 30:
            self.add([f"## {title}", "", f"skipped: {left:.0f} s of the --budget left", ""])
            return 124
        timeout = min(timeout, left - 10)
        print(f"[gpu_check] {title}: {' '.join(command)}", flush=True)
        start = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            status, output = f"exit {result.returncode}", result.stdout + result.stderr
            code = result.returncode
        except subprocess.TimeoutExpired as error:
            status, code = f"stopped after its {timeout:.0f} s limit", 124
            output = (
                (error.stdout or b"").decode(errors="replace")
                if isinstance(error.stdout, bytes)
                else (error.stdout or "")
            )
        elapsed = time.perf_counter() - start
        shown = [line for line in output.splitlines() if line.strip()][-keep:]
        self.lines += [
            f"## {title}",
            "",
            f"`{' '.join(Path(c).name if c == sys.executable else c for c in command)}` — {status}, {elapsed:.0f} s",
            "",
            "```",
            *shown,
            "```",
            "",
        ]
        self.write()
        print("\n".join(shown[-15:]), flush=True)
        return code

    def add(self, lines: list[str]) -> None:
        self.lines += lines
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")


def recipe_table(sweep: Path, target: float = 0.90) -> list[str]:
    """Per run of the CIFAR sweep: test accuracy, training seconds, images per second (median over
    epochs, :class:`~l2bn_lit.lit.callbacks.TrainingClock`) and the training seconds to ``target``
    validation accuracy, as Markdown lines (the recipe's goal: 90% within 60 s of training)."""
    import pandas as pd

    from l2bn_lit.reports.runs import time_to_accuracy

    rows = []
    for metrics in sorted(sweep.rglob("seed*/metrics.csv")):  # <norm>/seed*, or <padding>/<norm>/seed*
        table = pd.read_csv(metrics)
        run = metrics.parent
        reached = time_to_accuracy(run, target)
        rows.append(
            {
                "run": run.relative_to(sweep).as_posix(),
                "test/acc": table["test/acc"].dropna().iloc[-1] if "test/acc" in table else None,
                "training s": table["time/train_s"].max() if "time/train_s" in table else None,
                "images/s": table["time/images_per_s"].median() if "time/images_per_s" in table else None,
                f"s to {target:.0%} val acc": "not reached" if reached is None else round(reached, 1),
            }
        )
    if not rows:
        return ["(no finished runs)", ""]
    return [pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"), ""]


def comparison_command(
    py: str, out: Path, seeds: int, parallel: int, paddings: list[str], common: list[str]
) -> tuple[str, list[str]]:
    """The section's title and command of the CIFAR-10 BN vs L2BN comparison: ``l2bn sweep`` for one
    padding, ``l2bn ablation`` with one cell per padding (the first the reference) for several."""
    config = ["--config", "configs/cifar10jpeg_resnet20_gpu.yaml"]
    runs = ["--seeds", *map(str, range(seeds)), "--out", str(out), "--parallel", str(parallel)]
    if len(paddings) == 1:
        title = f"CIFAR-10 ResNet-20, BN vs L2BN, {paddings[0]} padding (l2bn sweep)"
        command = [py, "-m", "l2bn_lit", "sweep", *config, "--norms", "bn", "l2bn", *runs, "--", *common]
        return title, command + PADDINGS[paddings[0]]
    cells = [arg for name in paddings for arg in ("--cell", f"{name}={' '.join(PADDINGS[name])}")]
    title = f"CIFAR-10 ResNet-20, BN vs L2BN, padding {' vs '.join(paddings)} (l2bn ablation)"
    return title, [py, "-m", "l2bn_lit", "ablation", *config, "--norms", "bn", "l2bn", *runs, *cells, "--", *common]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="seconds: few repeats, a tiny synthetic comparison")
    parser.add_argument("--data", help="CIFAR-10 JPEG copy: folder-per-class folder or its .tar.gz")
    parser.add_argument("--wheels", help="folder of wheels for the modules this machine lacks")
    parser.add_argument("--work", default="runs/gpu_check", help="scratch folder (extracted data, runs)")
    parser.add_argument("--report", default="runs/gpu_check/report.md")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm of the comparison")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--parallel", type=int, default=6, help="comparison runs sharing the device at a time")
    parser.add_argument(
        "--padding",
        nargs="+",
        default=["black"],
        choices=list(PADDINGS),
        help="the random crop's padding; several: one comparison per padding (l2bn ablation)",
    )
    parser.add_argument("--budget", type=float, default=480, help="seconds for all sections; late ones are skipped")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env_lines = install_missing(args.wheels, work / "site")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here; use --device cpu --quick")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    report = Report(
        Path(args.report),
        [
            f"# GPU check: {name}",
            "",
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; {os.cpu_count()} CPU cores; "
            f"`python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`",
            "",
            "## Environment",
            "",
            *env_lines,
            "",
        ],
        args.budget,
    )
    py = sys.executable
    repeats = ["--repeats", "3", "--warmup", "1"] if args.quick else ["--repeats", "20", "--warmup", "5"]
    device = ["--device", args.device]

    if args.device == "cuda":
        report.section(
            "CUDA tests (pytest -m gpu tests/gpu)",
            [py, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"],
            150,
        )

    folder = image_folder(args.data, work, args.quick)
    sys.path.insert(0, str(ROOT))
    from datamodules import ImageFolderDataModule

    decode_start = time.perf_counter()
    ImageFolderDataModule(
        str(folder), test_split="test", image_size=32, transforms="cifar", on_device=True
    ).prepare_data()
    report.add(
        [f"Image data: {folder} (decoded into the uint8 cache in {time.perf_counter() - decode_start:.1f} s)", ""]
    )
    epochs, seeds = (1, 2) if args.quick else (args.epochs, args.seeds)
    common = [
        "--data.init_args.root",
        str(folder),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.accelerator",
        "gpu" if args.device == "cuda" else "cpu",
        *([] if args.device == "cuda" else ["--trainer.precision", "32"]),  # the CPU path checks the script only
        *(["--data.init_args.batch_size", "64"] if args.quick else []),
    ]
    title, command = comparison_command(py, work / "cifar10_sweep", seeds, args.parallel, args.padding, common)
    report.section(f"{title}, {seeds} seeds, {epochs} epochs", command, 300, keep=45)
    report.add(["### The recipe per run (bf16 autocast, channels_last, on-device data; TrainingClock)", ""])
    report.add(recipe_table(work / "cifar10_sweep"))

    dtypes = ["float32"] if args.quick else ["float32", "bfloat16"]  # --quick: the script's path, not figures
    for dtype in dtypes:
        report.section(
            f"bench_norm {args.device} {dtype} eager",
            [py, "benchmarks/bench_norm.py", *device, "--dtype", dtype, *repeats],
            60,
            keep=14,
        )
    step = [py, "benchmarks/bench_train_step.py", *device, "--channels-last", *repeats[:2]]
    step += ["--archs", "resnet20", "--batch-size", "32"] if args.quick else []
    report.section(f"bench_train_step {args.device} channels_last float32", step, 60, keep=5)
    if args.quick:  # the script's path is checked; the ATen-path and compiled figures are for a GPU
        print(f"[gpu_check] report: {report.path}")
        return
    report.section(
        f"bench_train_step {args.device} channels_last float32, L2BN on the ATen path",
        [*step, "--kernels", "aten"],
        60,
        keep=5,
    )
    report.section(
        f"bench_train_step {args.device} channels_last bf16 autocast", [*step, "--amp", "bfloat16"], 60, keep=5
    )
    for dtype in dtypes:
        report.section(
            f"bench_norm {args.device} {dtype} compiled",
            [py, "benchmarks/bench_norm.py", *device, "--dtype", dtype, "--compile", *repeats],
            120,
            keep=14,
        )
    print(f"[gpu_check] report: {report.path}")


if __name__ == "__main__":
    main()
