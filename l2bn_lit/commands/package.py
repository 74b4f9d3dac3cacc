"""``l2bn package``: a DCASE 2025 Task 1 inference package from the project's checkpoints.

    l2bn package GENERAL_CKPT [--device-model a=CKPT ...] --name Lastname_Institution_task1 --index 1
        --out DIR [--precision auto|32|16|bf16]

Writes ``DIR``, a package installable with ``pip install DIR`` that needs torch, torchaudio,
soundfile and numpy but not this repository: the submission module ``<name>/<name>_<index>.py``
with the challenge's API (``load_model``, ``load_inputs``, ``get_model_for_device``, ``predict``;
:file:`templates/dcase2025_submission.py`), its checkpoint ``<name>/ckpts/<name>_<index>.pt`` (each
network's weights and settings as plain data, read from the checkpoints' saved settings), the
front-end and network code it runs (:mod:`l2bn_lit.commands.vendoring`), and ``<name>/resources/dummy.wav``
for the challenge's complexity script. Up to four submissions (indexes 1-4) share one package: a
second index adds its module to ``DIR``.

Every network is rebuilt from its settings and must give the checkpoint's own outputs before it is
written. Then the package is measured in a fresh interpreter that cannot import this project, as the
challenge's ``test_complexity.py`` measures it (per device: torchinfo MACs and parameter bytes), and
the project's count of L2BN's per-sample norms is added (:mod:`l2bn_lit.reports.model_cost`); the per-device
table goes to ``DIR/complexity_<name>_<index>.json`` with the limits' verdict.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import nn

from l2bn_lit.lit.audio_classifier import AudioSceneClassifier
from l2bn_lit.lit.loading import load_module
from l2bn_lit.reports.model_cost import DCASE_LIMITS, count_network
from models.audio import build_audio_model

from .options import parse_device_model
from .vendoring import vendor_network_code

__all__ = ["build_package", "main", "submission_spec"]

TEMPLATES = Path(__file__).parent / "templates"
#: the device ids the challenge's complexity script measures
CHALLENGE_DEVICES = ("a", "b", "c", *(f"s{i}" for i in range(1, 11)))
PRECISIONS = ("32", "16", "bf16")


def _template_constants() -> dict[str, Any]:
    """The submission template's literal constants (``FORMAT``, ``GENERAL``): one definition for both sides."""
    constants = {}
    for node in ast.parse((TEMPLATES / "dcase2025_submission.py").read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            constants.update({target.id: node.value.value for target in node.targets if isinstance(target, ast.Name)})
    return constants


#: the checkpoint format the template reads, and the name of its general network
FORMAT, GENERAL = _template_constants()["FORMAT"], _template_constants()["GENERAL"]


class PackageError(ValueError):
    """Checkpoints that cannot make one submission, or a package folder that is not this one's."""


def _network_entry(module: AudioSceneClassifier, path: Path) -> dict[str, Any]:
    """One network's settings and float32 weights; rebuilt from them, it must give ``module``'s outputs."""
    hp = module.hparams
    entry = {
        "arch": hp.arch,
        "norm": hp.norm,
        "norm_options": dict(hp.norm_options or {}),
        "arch_options": dict(hp.arch_options or {}),
        "source": path.name,
    }
    network = module.feature_network.float().eval()
    state = {key: value.detach().clone() for key, value in network.state_dict().items()}
    rebuilt = build_audio_model(
        entry["arch"], hp.num_classes, entry["norm"], entry["norm_options"], entry["arch_options"]
    )
    try:
        rebuilt.load_state_dict(state)
    except RuntimeError as error:
        raise PackageError(f"{path}: its network cannot be rebuilt from its saved settings ({error})") from error
    rebuilt.eval()
    with torch.no_grad():
        features = module.frontend(torch.randn(2, hp.input_shape[0], generator=torch.Generator().manual_seed(0)))
        if not torch.allclose(rebuilt(features), network(features), rtol=1e-5, atol=1e-6):
            raise PackageError(
                f"{path}: the network rebuilt from its saved settings computes something else than the checkpoint's"
            )
    return {**entry, "state_dict": state}


def submission_spec(general: Path, device_models: dict[str, Path], precision: str = "auto") -> dict[str, Any]:
    """The submission checkpoint's content from the general checkpoint and ``{device: checkpoint}``
    (``precision`` ``auto``: the general checkpoint's ``predict_precision``). The checkpoints must
    share the front-end, the clip length and the class names."""
    if GENERAL in device_models:
        raise PackageError(
            f"--device-model {GENERAL}=...: '{GENERAL}' names the general model; give the devices' own ids"
        )
    paths = {GENERAL: general, **device_models}
    modules = {}
    for name, path in paths.items():
        module = load_module(path, {}, AudioSceneClassifier)
        if not isinstance(module, AudioSceneClassifier):
            raise PackageError(
                f"{path}: a {type(module).__name__} checkpoint; the DCASE package takes audio models "
                "(AudioSceneClassifier)"
            )
        if not module.hparams.get("class_names"):
            raise PackageError(f"{path}: the checkpoint names no classes (class_names); train it with a TAU datamodule")
        modules[name] = module
    first = modules[GENERAL]

    def shared(module: AudioSceneClassifier) -> dict[str, Any]:
        return {
            **module.frontend.options,
            "samples": module.hparams.input_shape[0],
            "class_names": list(module.hparams.class_names),
        }

    for name, module in modules.items():
        differ = {
            key: (value, shared(first)[key]) for key, value in shared(module).items() if value != shared(first)[key]
        }
        if differ:
            detail = "; ".join(f"{key}={mine!r} (general: {theirs!r})" for key, (mine, theirs) in differ.items())
            raise PackageError(
                f"{paths[name]}: its front-end or classes differ from the general model's ({detail}); "
                "the models of one submission share them (fine-tune the device models from the general one)"
            )
    if precision == "auto":
        precision = str(first.hparams.get("predict_precision", "16"))
    if precision not in PRECISIONS:
        raise PackageError(f"--precision {precision}: choose auto or one of {', '.join(PRECISIONS)}")
    frontend = {key: value for key, value in shared(first).items() if key != "class_names"}
    return {
        "format": FORMAT,
        "class_order": shared(first)["class_names"],
        "precision": precision,
        "frontend": frontend,
        "models": {name: _network_entry(module, paths[name]) for name, module in modules.items()},
    }


def _pyproject(name: str) -> str:
    return f'''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "1.0.0"
description = "DCASE 2025 Task 1 inference package (written by l2bn-lit's l2bn package)"
requires-python = ">=3.10"
dependencies = ["torch>=2.3", "torchaudio", "soundfile>=0.12", "numpy"]

[tool.setuptools.packages.find]
include = ["{name}*"]

[tool.setuptools.package-data]
"{name}" = ["ckpts/*.pt", "resources/*.wav"]
'''


def _check_folder(out: Path, name: str) -> None:
    """``out`` is empty, missing, or a package this command wrote for ``name``."""
    if not out.exists() or not any(out.iterdir()):
        return
    pyproject = out / "pyproject.toml"
    if not pyproject.is_file() or f'name = "{name}"' not in pyproject.read_text():
        raise PackageError(
            f"--out {out}: the folder holds something else than the package {name}; give an empty or new folder"
        )


def build_package(spec: dict[str, Any], name: str, index: int, out: Path) -> Path:
    """Writes (or adds submission ``index`` to) the package ``name`` in ``out``; returns the module file."""
    if not name.isidentifier():
        raise PackageError(
            f"--name {name!r}: the submission label must be a Python identifier, e.g. Lastname_Institution_task1"
        )
    if index not in (1, 2, 3, 4):
        raise PackageError(f"--index {index}: the challenge takes submission indexes 1 to 4")
    _check_folder(out, name)
    package = out / name
    for folder in ("ckpts", "resources"):
        (package / folder).mkdir(parents=True, exist_ok=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text(
        f'"""{name}: DCASE 2025 Task 1 submissions {name}_1 to {name}_4 (written by l2bn package)."""\n'
    )
    shutil.rmtree(package / "network", ignore_errors=True)
    vendor_network_code(["models.audio", "models.frontend"], package / "network", f"{name}.network")
    module = package / f"{name}_{index}.py"
    shutil.copyfile(TEMPLATES / "dcase2025_submission.py", module)
    torch.save(spec, package / "ckpts" / f"{name}_{index}.pt")
    frontend = spec["frontend"]
    noise = np.random.default_rng(0).normal(0, 0.1, frontend["samples"]).astype(np.float32)
    sf.write(package / "resources" / "dummy.wav", noise, frontend["sample_rate"], subtype="PCM_16")
    (out / "pyproject.toml").write_text(_pyproject(name))
    return module


def measure_package(
    out: Path, name: str, index: int, devices: tuple[str, ...] = CHALLENGE_DEVICES
) -> dict[str, dict[str, Any]]:
    """The challenge's per-device measurement of the built package, run in a fresh interpreter that
    cannot import this project (``templates/check_submission.py``)."""
    command = [sys.executable, str(TEMPLATES / "check_submission.py"), str(out.resolve()), name, str(index), *devices]
    result = subprocess.run(command, capture_output=True, text=True, cwd=out, timeout=600)
    if result.returncode != 0:
        raise PackageError(
            f"the package in {out} does not run without this repository:\n{result.stderr.strip()[-2000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def complexity_table(spec: dict[str, Any], measured: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per device: the challenge's figures plus L2BN's per-sample norm cost and the limits' verdict
    on their sum; torchinfo's MACs are checked against the project's own count of the same network."""
    counts: dict[str, tuple[int, int, int]] = {}  # per network, counted once (most devices share the general one)
    table = {}
    for device, row in measured.items():
        name = device if device in spec["models"] else GENERAL
        if name not in counts:
            entry = spec["models"][name]
            network: nn.Module = build_audio_model(
                entry["arch"], len(spec["class_order"]), entry["norm"], entry["norm_options"], entry["arch_options"]
            )
            counts[name] = count_network(network, row["input_shape"][1:])
        macs, _, values = counts[name]
        if macs != row["MACs"]:
            raise PackageError(
                f"device {device}: the package's network counts {row['MACs']:,} MACs, the project's {macs:,}"
            )
        total = row["MACs"] + 2 * values
        table[device] = {
            **row,
            "model": name,
            "l2bn_inference_macs": 2 * values,
            "macs_for_limits": total,
            "within_limits": row["Params"] <= DCASE_LIMITS["parameter_memory_bytes"] and total <= DCASE_LIMITS["macs"],
        }
    return table


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="l2bn package", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "general", help="the general model's checkpoint (clips of devices without their own model go to it)"
    )
    parser.add_argument(
        "--device-model",
        action="append",
        default=[],
        metavar="DEVICE=CKPT",
        help="a device's own model (repeat per device)",
    )
    parser.add_argument(
        "--name", required=True, help="the submission label, e.g. Lastname_Institution_task1 (the package's name)"
    )
    parser.add_argument(
        "--index", type=int, required=True, help="the submission index, 1-4 (the module <name>_<index>)"
    )
    parser.add_argument("--out", required=True, type=Path, help="the package folder (pip install it)")
    parser.add_argument(
        "--precision",
        default="auto",
        help="the networks' precision: auto (the checkpoint's predict_precision), 32, 16 or bf16",
    )
    args = parser.parse_args(argv)
    general = Path(args.general)
    if not general.is_file():
        raise FileNotFoundError(f"{general}: no such checkpoint")
    spec = submission_spec(general, dict(parse_device_model(item) for item in args.device_model), args.precision)
    module = build_package(spec, args.name, args.index, args.out)
    table = complexity_table(spec, measure_package(args.out, args.name, args.index))
    (args.out / f"complexity_{args.name}_{args.index}.json").write_text(json.dumps(table, indent=2))
    print(
        f"{module}: {len(spec['models'])} network(s) ({', '.join(spec['models'])}) at {spec['precision']} "
        f"bit, classes {spec['class_order']}"
    )
    for device, row in table.items():
        print(
            f"{device:>3} -> {row['model']:<8} parameters {row['Params']:>8,} B  MACs {row['MACs']:>11,} (torchinfo) "
            f"+ {row['l2bn_inference_macs']:>9,} (L2BN norms)  "
            f"{'within' if row['within_limits'] else 'OVER the limits'}"
        )
    print(f"install: pip install {args.out}")
    return table


if __name__ == "__main__":
    from l2bn_lit.errors import run_main

    run_main(main)
