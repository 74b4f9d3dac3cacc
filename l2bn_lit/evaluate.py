"""Many checkpoints on one split in one pass: a leaderboard and the ensemble.

    python -m l2bn_lit.evaluate --config configs/<x>.yaml [--data.init_args.* ...] CKPT|FOLDER [...]
        [--out runs/evaluate] [--split test|val]

Each checkpoint builds its own model from its saved settings (architecture, norm, front-end), so a
BN checkpoint is never evaluated as L2BN; one whose label set, input shape or sample rate differs from
the data is refused with the checkpoint-mismatch error. A FOLDER (a run, or a sweep) contributes every
run's best checkpoint (``best-*.ckpt``; ``last.ckpt`` where there is no best).

The data is read once: each batch is decoded once, audio features are computed once per distinct
front-end and handed to every model that uses it. Writes ``leaderboard.md`` and ``leaderboard.csv``
into ``--out``: per checkpoint the macro class-wise accuracy (DCASE's rank), accuracy, log loss,
for audio the macro accuracy on devices seen in training and on unseen ones, parameters and MACs;
and an ensemble row (the mean of the models' probabilities).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from .cli import LINKED
from .complexity import complexity_report
from .dcase import dcase_report
from .module import CheckpointMismatchError, ClassificationModule, architecture_mismatches

__all__ = ["find_checkpoints", "evaluate_checkpoints", "main"]

log = logging.getLogger(__name__)


def find_checkpoints(paths: list[str]) -> list[Path]:
    """``.ckpt`` files as given, and each run's best checkpoint under each folder (sorted)."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_file():
            found.append(item)
            continue
        if not item.is_dir():
            raise FileNotFoundError(f"{item}: no such checkpoint file or folder")
        runs = sorted({p.parent for p in item.rglob("*.ckpt")})
        for run in runs:
            best = sorted(run.glob("best-*.ckpt"))
            found.extend(best[-1:] or sorted(run.glob("last.ckpt"))[:1])
        if not runs:
            raise FileNotFoundError(f"{item}: no .ckpt file under this folder")
    return found


def _load(path: Path, data_settings: dict[str, Any], default: type[ClassificationModule]) -> ClassificationModule:
    """The checkpoint's model, built from the checkpoint's own settings; its class from the run's
    ``config.yaml`` (written by the CLI beside ``checkpoints/``), else ``default``."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved = checkpoint.get("hyper_parameters", {})
    mismatches = architecture_mismatches(data_settings, saved, tuple(k for k in LINKED if data_settings.get(k) is not None))
    if mismatches:
        mismatches = mismatches.replace(": model=", ": data=")
        raise CheckpointMismatchError(f"{path} does not fit the data: {mismatches}; evaluate it with the data it was trained on")
    cls = default
    config = path.parent.parent / "config.yaml"
    if config.is_file():
        module_name, _, name = yaml.safe_load(config.read_text())["model"]["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), name)
    return cls.load_from_checkpoint(path, map_location="cpu").eval()


def _metrics(probs: np.ndarray, labels: np.ndarray, devices: list[str] | None, known: set[str], class_names: list[str]) -> dict[str, float]:
    report = dcase_report(probs, labels, devices or ["-"] * len(labels), class_names)
    row = dict(zip(report.summary["metric"], report.summary["value"]))
    row.pop("support", None)
    if devices is not None:
        seen = np.isin(devices, sorted(known))
        for label, mask in (("known devices", seen), ("unknown devices", ~seen)):
            if mask.any():
                part = dcase_report(probs[mask], labels[mask], list(np.asarray(devices)[mask]), class_names).summary
                row[f"macro accuracy, {label}"] = float(part.set_index("metric").loc["macro class-wise accuracy", "value"])
    return row


@torch.no_grad()
def evaluate_checkpoints(
    models: list[ClassificationModule], loader: torch.utils.data.DataLoader, device: torch.device, transfer: Any = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Probabilities ``(N, K)`` of each model and the labels ``(N,)``, in one pass over ``loader``;
    audio features are computed once per distinct front-end per batch."""
    probs: list[list[torch.Tensor]] = [[] for _ in models]
    labels = []
    for batch in loader:
        if transfer is not None:
            batch = transfer(batch)
        x, y = batch
        x = x.to(device)
        features: dict[str, torch.Tensor] = {}
        for index, model in enumerate(models):
            settings = getattr(model, "frontend_settings", None)
            if settings is not None and x.dim() == 2:
                key = json.dumps(settings, sort_keys=True)
                if key not in features:
                    features[key] = model.frontend(x)
                inputs = features[key]
            else:
                inputs = x
            probs[index].append(model(inputs).float().softmax(1).cpu())
        labels.append(y.cpu())
    return [torch.cat(p).numpy() for p in probs], torch.cat(labels).numpy()


def main(argv: list[str] | None = None) -> pd.DataFrame:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m l2bn_lit.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files or run/sweep folders")
    parser.add_argument("--out", default="runs/evaluate", help="folder for leaderboard.md and leaderboard.csv")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    own, cli_args = _split_args(parser, argv)
    from .cli import main as cli_main

    cli = cli_main(cli_args, run=False)
    data = cli.datamodule
    if getattr(data, "feature_cache", None) is not None:
        log.warning("evaluate computes the features itself, once per front-end: the feature cache is not used")
        data.feature_cache = None
    data.setup("test" if own.split == "test" else "fit")
    loader = data.test_dataloader() if own.split == "test" else data.val_dataloader()
    data_settings = {key: getattr(data, key, None) for key in LINKED}
    paths = find_checkpoints(own.checkpoints)
    device = torch.device(own.device)
    models = [_load(path, data_settings, type(cli.model)).to(device) for path in paths]

    def transfer(batch: Any) -> Any:  # the device-resident image pipeline gathers its batch here
        return data.on_after_batch_transfer(batch, 0) if hasattr(data, "on_after_batch_transfer") else batch

    probs, labels = evaluate_checkpoints(models, loader, device, transfer)
    dataset = data.test_set if own.split == "test" else data.val_set
    files = getattr(getattr(dataset, "dataset", dataset), "files", None)
    devices = None
    if files is not None and hasattr(data, "train_table"):
        from datamodules.tau_layout import device_of

        if own.split == "val":
            files = [files[i] for i in dataset.indices]
        devices = [device_of(f) for f in files]
    known = set(data.train_table["device"]) if hasattr(data, "train_table") else set()
    class_names = list(data.class_names)
    rows = []
    for path, model, p in zip(paths, models, probs):
        size = complexity_report(model, list(model.hparams.input_shape))
        macs = size.get("macs_network", size["macs"])
        rows.append({"checkpoint": str(path), "norm": model.hparams.norm, **_metrics(p, labels, devices, known, class_names),
                     "parameters": size["parameters"], "MACs": macs})
    if len(models) > 1:
        ensemble = np.mean(probs, axis=0)
        rows.append({"checkpoint": f"ensemble (mean of {len(models)})", "norm": "-", **_metrics(ensemble, labels, devices, known, class_names),
                     "parameters": sum(r["parameters"] for r in rows), "MACs": sum(r["MACs"] for r in rows)})
    table = pd.DataFrame(rows)
    out = Path(own.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "leaderboard.csv", index=False)
    markdown = table.to_markdown(index=False, floatfmt=".4f")
    (out / "leaderboard.md").write_text(f"{len(labels)} clips/images of the {own.split} split\n\n{markdown}\n")
    print(markdown)
    return table


def _split_args(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This tool's own arguments, and the LightningCLI options (``--config``, ``--data.*``, ...)."""
    own_options = {"--out", "--split", "--device"}
    mine, cli, i = [], [], 0
    while i < len(argv):
        item = argv[i]
        takes_value = i + 1 < len(argv) and not argv[i + 1].startswith("--") and "=" not in item
        if item.startswith("--"):
            target = mine if item.split("=", 1)[0] in own_options else cli
            target.extend(argv[i : i + 2] if takes_value else [item])
            i += 2 if takes_value else 1
        else:
            mine.append(item)
            i += 1
    return parser.parse_args(mine), cli


if __name__ == "__main__":
    main()
