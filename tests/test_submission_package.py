"""``l2bn package``: the DCASE 2025 inference package, built from two short runs, installed into a
fresh environment that cannot import this project, against ``l2bn evaluate`` on the same checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from tau_lists import write_2025_eval_list

from l2bn_lit.commands import vendoring as vendor
from l2bn_lit.commands.evaluate import find_checkpoints
from l2bn_lit.commands.evaluate import main as evaluate
from l2bn_lit.commands.package import PackageError, submission_spec
from l2bn_lit.commands.package import main as package
from l2bn_lit.lit.audio_classifier import AudioSceneClassifier
from l2bn_lit.lit.loading import load_module
from l2bn_lit.serialization import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DCASE = str(ROOT / "configs" / "quickstart_dcase.yaml")
NAME = "Tester_Lab_task1"
#: run in the installed package's environment: this project, Lightning and the data modules unimportable
BLOCK = (
    "import sys\nfor name in ('l2bn_lit', 'models', 'datamodules', 'lightning', 'pytorch_lightning'):\n"
    "    sys.modules[name] = None\n"
)


def _checkpoints(dcase_runs) -> tuple[Path, Path]:
    folder, _ = dcase_runs
    return find_checkpoints([str(folder / "bn")])[0], find_checkpoints([str(folder / "l2bn")])[0]


def _resample_some(root: Path, listed: str) -> int:
    """Rewrites every third clip of the list at 22.05 kHz in stereo (the package must resample and
    mix down as the datamodule does); returns how many."""
    files = pd.read_csv(root / listed, sep="\t")["filename"].tolist()[::3]
    for name in files:
        data, rate = sf.read(root / name, dtype="float32")
        wave = AF.resample(torch.from_numpy(data), rate, 22050).numpy()
        sf.write(root / name, np.stack([wave, 0.5 * wave], axis=1), 22050, subtype="FLOAT")
    return len(files)


def _venv(tmp_path: Path, package_folder: Path) -> Path:
    """A fresh environment (this interpreter's site packages for torch, without the project on the
    path) with the package installed the way pip installs it; returns its python."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            str(package_folder),
        ],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    return python


def test_the_package_installs_runs_without_the_project_and_predicts_as_evaluate(dcase_runs, root, tmp_path):
    general, device_a = _checkpoints(dcase_runs)  # BN general model, an L2BN model for device a
    listed = write_2025_eval_list(root, with_devices=True)
    assert _resample_some(root, listed) > 0
    out = tmp_path / "package"
    table = package(
        [str(general), "--device-model", f"a={device_a}", "--name", NAME, "--index", "1", "--out", str(out)]
    )

    # per device as the challenge's test_complexity.py measures: a has its own (L2BN) network,
    # the others the general one
    parameters = sum(p.numel() for p in load_module(device_a, {}, AudioSceneClassifier).feature_network.parameters())
    assert table["a"]["model"] == "a" and table["s4"]["model"] == table["b"]["model"] == "general"
    assert table["a"]["l2bn_inference_macs"] > 0 and table["b"]["l2bn_inference_macs"] == 0
    assert table["a"]["macs_for_limits"] == table["a"]["MACs"] + table["a"]["l2bn_inference_macs"]
    assert table["a"]["input_shape"] == [1, 1, 64, 63]  # 1 s at 16 kHz, hop 256: 1 + 16000 // 256 frames
    saved = json.loads((out / f"complexity_{NAME}_1.json").read_text())
    assert saved["s10"]["MACs"] == table["s10"]["MACs"]

    python = _venv(tmp_path, out)
    files = pd.read_csv(root / listed, sep="\t")
    script = BLOCK + (
        "import json, torch\n"
        f"from {NAME}.{NAME}_1 import predict, load_model, get_model_for_device, load_inputs\n"
        f"import {NAME}; assert 'site-packages' in {NAME}.__file__, {NAME}.__file__\n"
        f"logits, order = predict({[str(root / f) for f in files['filename']]!r}, "
        f"{files['device_id'].tolist()!r}, use_cuda=False)\n"
        "model = load_model()\n"
        "dtypes = {d: str(next(get_model_for_device(model, d).parameters()).dtype) for d in ('a', 's4', 'unknown')}\n"
        "same = get_model_for_device(model, 'unknown') is get_model_for_device(model, 'b')\n"
        "print(json.dumps({'logits': [l.tolist() for l in logits], 'order': order, 'dtypes': dtypes, 'same': same}))\n"
    )
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    installed = json.loads(result.stdout.strip().splitlines()[-1])
    assert (
        installed["dtypes"] == {"a": "torch.float16", "s4": "torch.float16", "unknown": "torch.float16"}
        and installed["same"]
    )

    # l2bn evaluate on the same checkpoints, list and precision (16 by default for both)
    evaluate(
        [
            "--config",
            DCASE,
            "--data.init_args.root",
            str(root),
            "--data.init_args.predict_list",
            listed,
            "--split",
            "predict",
            str(general),
            "--device-model",
            f"a={device_a}",
            "--out",
            str(tmp_path / "evaluate"),
        ]
    )
    output = pd.read_csv(tmp_path / "evaluate" / "output.csv", sep="\t")
    class_names = load_checkpoint(general)["hyper_parameters"]["class_names"]
    assert installed["order"] == class_names == list(output.columns[2:])
    logits = torch.tensor(installed["logits"])
    assert logits.shape == (len(files), len(class_names))
    assert [class_names[i] for i in logits.argmax(1)] == output["scene_label"].tolist()  # every clip
    np.testing.assert_allclose(logits.softmax(1).numpy(), output[class_names].to_numpy(), atol=2e-6)

    # the challenge's measurement run against the installed package gives the build's figures
    check = subprocess.run(
        [
            str(python),
            str(ROOT / "l2bn_lit" / "commands" / "templates" / "check_submission.py"),
            str(tmp_path / "empty"),
            NAME,
            "1",
            "a",
            "s4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    measured = json.loads(check.stdout)
    for device in ("a", "s4"):
        assert {key: measured[device][key] for key in ("MACs", "Params")} == {
            key: table[device][key] for key in ("MACs", "Params")
        }
    assert measured["a"]["Params"] == 2 * parameters  # 16-bit parameters

    # a second submission index joins the same package; a foreign checkpoint is refused by load_model
    package([str(device_a), "--name", NAME, "--index", "2", "--out", str(out), "--precision", "32"])
    assert (out / NAME / f"{NAME}_1.py").is_file() and (out / NAME / f"{NAME}_2.py").is_file()
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    refused = subprocess.run(
        [
            str(python),
            "-c",
            BLOCK + f"from {NAME}.{NAME}_1 import load_model\nload_model({str(tmp_path / 'foreign.pt')!r})",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert refused.returncode != 0 and "not a checkpoint of an l2bn-lit DCASE 2025 submission" in refused.stderr


def test_checkpoints_that_cannot_make_one_submission_are_refused(dcase_runs, tmp_path):
    general, device_a = _checkpoints(dcase_runs)
    other = load_checkpoint(device_a)
    other["hyper_parameters"]["frontend"]["f_max"] = 6000.0  # another front-end (same shapes, other mel filters)
    torch.save(other, tmp_path / "other_frontend.ckpt")
    with pytest.raises(
        PackageError,
        match=r"other_frontend.ckpt: its front-end or classes differ from the general model's "
        r"\(f_max=6000.0 \(general: None\)\)",
    ):
        submission_spec(general, {"a": tmp_path / "other_frontend.ckpt"})
    with pytest.raises(PackageError, match="'general' names the general model"):
        submission_spec(general, {"general": device_a})
    with pytest.raises(PackageError, match="--precision 8"):
        submission_spec(general, {}, precision="8")
    with pytest.raises(PackageError, match="must be a Python identifier"):
        package([str(general), "--name", "Tester-Lab", "--index", "1", "--out", str(tmp_path / "a")])
    with pytest.raises(PackageError, match="indexes 1 to 4"):
        package([str(general), "--name", NAME, "--index", "5", "--out", str(tmp_path / "b")])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(PackageError, match="holds something else than the package"):
        package([str(general), "--name", NAME, "--index", "1", "--out", str(tmp_path / "busy")])
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_network_code_that_imports_the_training_stack_is_not_carried(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "__init__.py").write_text("")
    (models / "net.py").write_text("from torch import nn\n\nfrom .helper import width\n")
    (models / "helper.py").write_text("import math\n\nimport pytorch_lightning as pl\n\nwidth = 3\n")
    (models / "lazy.py").write_text("def extra():\n    import timm\n    return timm\n")
    monkeypatch.setattr(vendor, "ROOT", tmp_path)
    with pytest.raises(
        vendor.VendorError,
        match=r"models/helper.py:3: imports pytorch_lightning, which the inference package cannot carry",
    ):
        vendor.vendor_network_code(["models.net"], tmp_path / "out", "Pkg.network")
    written = vendor.vendor_network_code(
        ["models.lazy"], tmp_path / "out", "Pkg.network"
    )  # optional imports inside functions
    assert "models/lazy.py" in written


def test_the_carried_code_points_at_the_package_and_matches_the_project(tmp_path):
    written = vendor.vendor_network_code(["models.audio", "models.frontend"], tmp_path / "network", "Pkg.network")
    assert {"models/audio.py", "models/frontend.py", "models/cp_mobile.py", "nn/layers.py", "nn/__init__.py"} <= set(
        written
    )
    assert not any(name.startswith("models/audio_classifier") or name == "models/registry.py" for name in written)
    audio = (tmp_path / "network" / "models" / "audio.py").read_text()
    assert "from Pkg.network.nn import get_norm_layer" in audio and "l2bn_lit" not in audio.replace("l2bn_lit.nn", "")
    original = (ROOT / "models" / "audio.py").read_text()
    assert audio == original.replace("from l2bn_lit.nn import", "from Pkg.network.nn import")
    assert (tmp_path / "network" / "nn" / "functional.py").read_text() == (
        ROOT / "l2bn_lit" / "nn" / "functional.py"
    ).read_text()
