"""Many checkpoints on one split in one pass: a leaderboard and the ensemble.

    l2bn evaluate --config configs/<x>.yaml [--data.init_args.* ...] CKPT|FOLDER [...]
        [--out runs/evaluate] [--split test|val|predict] [--device-model DEVICE=CKPT ...] [--precision auto|32|16|bf16]

Each checkpoint builds its own model from its saved settings (architecture, norm, front-end), so a
BN checkpoint is never evaluated as L2BN; one whose label set, input shape or sample rate differs from
the data is refused with the checkpoint-mismatch error. A FOLDER (a run, or a sweep) contributes every
run's best checkpoint (``best-*.ckpt``; ``last.ckpt`` where there is no best).

The data is read once: each batch is decoded once, audio features are computed once per distinct
front-end and handed to every model that uses it. Writes ``leaderboard.md`` and ``leaderboard.csv``
into ``--out``: per checkpoint the precision it ran at (``--precision``: 16 for audio models by default,
as the DCASE baselines ship them), the macro class-wise accuracy (DCASE's rank), accuracy, log loss,
for audio the macro accuracy on devices seen in training and on unseen ones, parameters, their memory
at the dtype they ran at and MACs (torchinfo's count plus L2BN's per-sample norms,
:mod:`l2bn_lit.reports.model_cost`); a device-specific system's figures are its largest model's (the limits
hold per device model), an ensemble's the sum;
and an ensemble row (the mean of the models' probabilities).

DCASE 2025 device-specific systems: ``--device-model a=CKPT`` (once per device) routes each clip of
that device (the list's device column, else the file name) to that model and every other clip to
the first checkpoint (the general model); the last row is that system. ``--split predict`` writes
the challenge's ``output.csv`` (``filename``, ``scene_label``, one probability per class) for the
unlabeled predict list, from the last row's system (device-specific, ensemble or the one model).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from l2bn_lit.lit.classification_module import ClassificationModule
from l2bn_lit.lit.cli import LINKED
from l2bn_lit.lit.cli import main as cli_main
from l2bn_lit.lit.loading import load_module
from l2bn_lit.reports.dcase_scores import dcase_report, write_submission
from l2bn_lit.reports.model_cost import complexity_report

from .options import parse_device_model

__all__ = ["evaluate_checkpoints", "find_checkpoints", "main"]

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


def _metrics(
    probs: np.ndarray, labels: np.ndarray, devices: list[str] | None, known: set[str], class_names: list[str]
) -> dict[str, float]:
    report = dcase_report(probs, labels, devices or ["-"] * len(labels), class_names)
    row = dict(zip(report.summary["metric"], report.summary["value"]))
    row.pop("support", None)
    if devices is not None:
        seen = np.isin(devices, sorted(known))
        for label, mask in (("known devices", seen), ("unknown devices", ~seen)):
            if mask.any():
                part = dcase_report(probs[mask], labels[mask], list(np.asarray(devices)[mask]), class_names).summary
                row[f"macro accuracy, {label}"] = float(
                    part.set_index("metric").loc["macro class-wise accuracy", "value"]
                )
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
            frontend = getattr(model, "frontend", None)
            if frontend is not None and x.dim() == 2:
                settings = frontend.options
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
    parser = argparse.ArgumentParser(
        prog="l2bn evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoints",
        nargs="+",
        help="checkpoint files or run/sweep folders (with --device-model: the first is the general model)",
    )
    parser.add_argument(
        "--out", default="runs/evaluate", help="folder for leaderboard.md/csv (and output.csv with --split predict)"
    )
    parser.add_argument(
        "--split",
        choices=("test", "val", "predict"),
        default="test",
        help="predict: the unlabeled predict list; writes the challenge's output.csv",
    )
    parser.add_argument(
        "--device-model",
        action="append",
        default=[],
        metavar="DEVICE=CKPT",
        help="DCASE 2025 device-specific model (repeat per device): clips of DEVICE go to CKPT, "
        "others to the general model",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision",
        choices=("auto", "32", "16", "bf16"),
        default="auto",
        help="the precision of the network on the features (auto: 16 for the DCASE audio models, as the "
        "baselines ship them with model.half(); 32 for image models)",
    )
    own, cli_args = _split_args(parser, argv)
    cli = cli_main(cli_args, run=False)
    data = cli.datamodule
    if getattr(data, "feature_cache", None) is not None:
        log.warning("evaluate computes the features itself, once per front-end: the feature cache is not used")
        data.feature_cache = None
    data.setup("fit" if own.split == "val" else "test")
    loader = {"test": data.test_dataloader, "val": data.val_dataloader, "predict": data.predict_dataloader}[own.split]()
    data_settings = {key: getattr(data, key, None) for key in LINKED}
    paths = find_checkpoints(own.checkpoints)
    routes = dict(parse_device_model(item) for item in own.device_model)
    device = torch.device(own.device)
    models = [load_module(path, data_settings, type(cli.model)).to(device) for path in [*paths, *routes.values()]]
    precision = _set_precision(models, own.precision)

    def transfer(batch: Any) -> Any:  # the device-resident image pipeline gathers its batch here
        return data.on_after_batch_transfer(batch, 0) if hasattr(data, "on_after_batch_transfer") else batch

    probs, labels = evaluate_checkpoints(models, loader, device, transfer)
    dataset = {"test": data.test_set, "val": data.val_set, "predict": getattr(data, "predict_set", None)}[own.split]
    clips = getattr(dataset, "dataset", dataset)
    devices, names = getattr(clips, "devices", None), getattr(clips, "files", None)
    if own.split == "val":  # the validation subset of the training list
        devices = None if devices is None else [devices[i] for i in dataset.indices]
        names = None if names is None else [names[i] for i in dataset.indices]
    known = set(data.train_table["device"]) if hasattr(data, "train_table") else set()
    class_names = list(data.class_names)
    general = probs[: len(paths)]
    candidates = [(str(path), model, p) for path, model, p in zip(paths, models, general)]
    if routes:
        routed = _routed(general[0], dict(zip(routes, probs[len(paths) :])), devices, names)
        candidates.append((f"device-specific ({', '.join(routes)}; others: {paths[0].name})", None, routed))
    elif len(paths) > 1:
        candidates.append((f"ensemble (mean of {len(paths)})", None, np.mean(general, axis=0)))
    out = Path(own.out)
    out.mkdir(parents=True, exist_ok=True)
    if own.split == "predict":
        files = clips.files
        write_submission(out / "output.csv", files, candidates[-1][2], class_names)
        print(f"{out / 'output.csv'}: {len(files)} clips, from {candidates[-1][0]}")
        return pd.DataFrame({"filename": files})
    sizes = {id(model): _size(model) for model in models}  # once per model: each costs a counted forward pass
    rows = []
    for name, model, p in candidates:
        size = (
            sizes[id(model)] if model is not None else {"parameters": None, "parameter memory (B)": None, "MACs": None}
        )
        rows.append(
            {
                "checkpoint": name,
                "norm": model.hparams.norm if model is not None else "-",
                "precision": precision,
                **_metrics(p, labels, devices, known, class_names),
                **size,
            }
        )
    if routes:  # the device-specific system: the limits hold per device model, so its figures are the largest model's
        system = [sizes[id(m)] for m in [models[0], *models[len(paths) :]]]
        rows[-1].update(
            {key: max(size[key] for size in system) for key in ("parameters", "parameter memory (B)", "MACs")}
        )
    elif len(paths) > 1:  # the ensemble runs every model on each clip
        rows[-1].update({key: sum(r[key] for r in rows[:-1]) for key in ("parameters", "parameter memory (B)", "MACs")})
    table = pd.DataFrame(rows)
    table.to_csv(out / "leaderboard.csv", index=False)
    markdown = table.to_markdown(index=False, floatfmt=".4f")
    (out / "leaderboard.md").write_text(f"{len(labels)} clips/images of the {own.split} split\n\n{markdown}\n")
    print(markdown)
    return table


def _size(model: ClassificationModule) -> dict[str, int]:
    """Parameters, their memory at their actual dtype (the precision they run at) and MACs (torchinfo's,
    plus L2BN's per-sample norms)."""
    report = complexity_report(model, list(model.hparams.input_shape))
    return {
        "parameters": report["parameters"],
        "parameter memory (B)": report["parameter_bytes"],
        "MACs": report["macs_for_limits"],
    }


def _set_precision(models: list[ClassificationModule], precision: str) -> str:
    """Runs the models' networks at ``precision`` (``auto``: 16 for the audio models, 32 otherwise)."""
    audio = all(hasattr(model, "set_inference_precision") for model in models)
    if precision == "auto":
        precision = "16" if audio else "32"
    if precision != "32":
        if not audio:
            raise ValueError(
                f"--precision {precision} is for the DCASE audio models; evaluate image models at --precision 32"
            )
        for model in models:
            model.set_inference_precision(precision)
    return precision


def _routed(
    general: np.ndarray, by_device: dict[str, np.ndarray], devices: list[str] | None, files: list[str] | None = None
) -> np.ndarray:
    """Each clip's probabilities from its device's model, or from the general model (a device no model
    is routed to). A clip whose list gives no device is an error naming it: sending it to the general
    model would silently evaluate another system than the one described."""
    if devices is None:
        raise ValueError("--device-model needs each clip's recording device (audio data in the TAU layout)")
    unknown = [i for i, device in enumerate(devices) if device in ("", None) or device != device]
    if unknown:
        name = files[unknown[0]] if files is not None else f"clip {unknown[0]}"
        raise ValueError(
            f"--device-model: {len(unknown)} clip(s) of the list have no recording device, e.g. {name}; give the "
            "list a device_id column (as DCASE 2025's evaluation list has) or TAU file names ending in -<device>.wav"
        )
    routed = general.copy()
    for device, probs in by_device.items():
        mask = np.asarray(devices) == device
        routed[mask] = probs[mask]
    return routed


def _split_args(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This tool's own arguments, and the LightningCLI options (``--config``, ``--data.*``, ...)."""
    own_options = {"--out", "--split", "--device", "--device-model", "--precision"}
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
    from l2bn_lit.errors import run_main

    run_main(main)
