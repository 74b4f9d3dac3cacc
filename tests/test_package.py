"""The package's shape: the layer family imports nothing of Lightning or the pipelines; the tools sit
above the CLI (no import circle); one console entry point runs every command."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "l2bn_lit"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_layer_family_loads_without_lightning_or_the_pipelines():
    result = _run(
        "import sys, l2bn_lit, l2bn_lit.nn\n"
        "from l2bn_lit import L2BN2d, SyncL2BN, convert_norm, l2_batch_norm\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'lightning_fabric',\n"
        "             'datamodules', 'models', 'torchmetrics') or m in ('l2bn_lit.module', 'l2bn_lit.cli'))\n"
        "print(bad); assert not bad"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: Path) -> set[str]:
    """Modules a file imports: absolute names, and relative ones resolved inside ``l2bn_lit``."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            names.add(".".join(filter(None, [base, node.module or ""])))
    return names


def test_nn_imports_only_torch_and_itself():
    """(timm only lazily, to convert L2BNAct2d back to its BatchNormAct2d; Triton, which ships with
    torch's CUDA builds, only in the fused kernels' file, which fused.py imports on first use.)"""
    for path in (PACKAGE / "nn").glob("*.py"):
        allowed = ("l2bn_lit.nn", "torch", "__future__", "math", "typing", "collections", "itertools", "functools",
                   "os", "importlib", "contextlib", "timm.", *(("triton",) if path.name == "triton_kernels.py" else ()))
        outside = {n for n in _imports(path) if not n.startswith(allowed)}
        assert not outside, f"{path.name} imports {outside}"


def test_no_module_of_the_application_imports_the_cli_except_the_entry_points():
    """Only the tools that read a CLI config build on the CLI: the entry point and evaluate."""
    users = sorted(p.name for p in PACKAGE.glob("*.py") if "l2bn_lit.cli" in _imports(p))
    assert users == ["__main__.py", "evaluate.py"], users


def test_entry_point_runs_every_command():
    help_text = subprocess.run([sys.executable, "-m", "l2bn_lit", "--help"], capture_output=True, text=True, cwd=ROOT,
                               timeout=120).stdout
    for command in ("fit", "sweep", "ablation", "results", "complexity", "data", "evaluate", "package"):
        assert f"l2bn {command}" in help_text
    unknown = subprocess.run([sys.executable, "-m", "l2bn_lit", "train"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert unknown.returncode != 0 and "unknown command 'train'" in unknown.stderr
    fit = subprocess.run([sys.executable, "-m", "l2bn_lit", "fit", "--config", "configs/quickstart.yaml", "--trainer.fast_dev_run",
                          "true", "--trainer.enable_progress_bar", "false"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "test/acc" in fit.stdout


def test_console_script_is_installed():
    script = shutil.which("l2bn")
    if script is None:
        pytest.skip("the l2bn console script is installed by pip install -e .")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "l2bn sweep" in out


def test_models_load_without_lightning_and_the_old_class_paths_resolve():
    """``models`` is the network layer (no Lightning, no data, no commands); ``models.ImageClassifier``
    and ``models.AudioSceneClassifier``, the class paths configs and checkpoints held before the
    LightningModules moved to ``l2bn_lit.lit``, still name them."""
    result = _run(
        "import sys, models, models.frontend, models.audio_augment, models.heads, models.cp_mobile\n"
        "from models import build_model, build_audio_model\n"
        "build_model('resnet20', num_classes=10, norm='l2bn'); build_audio_model('cp_mobile', 10)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'lightning_fabric',\n"
        "             'torchmetrics', 'matplotlib', 'datamodules') or m.startswith('l2bn_lit.') and not\n"
        "             m.startswith(('l2bn_lit.nn', 'l2bn_lit.serialization')))\n"
        "print(bad); assert not bad\n"
        "from models import ImageClassifier, AudioSceneClassifier\n"
        "import l2bn_lit.lit as lit\n"
        "assert ImageClassifier is lit.ImageClassifier and AudioSceneClassifier is lit.AudioSceneClassifier\n"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_checkpoint_naming_the_old_class_path_loads(tmp_path):
    """A run's checkpoint whose saved class path is the pre-move ``models.ImageClassifier`` (what the
    code before the move wrote) is loaded by ``l2bn evaluate``'s loader as the image classifier."""
    from l2bn_lit.cli import main as cli_main
    from l2bn_lit.evaluate import load_module
    from l2bn_lit.lit import ImageClassifier
    from l2bn_lit.module import ClassificationModule

    cli_main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.class_path", "models.ImageClassifier",
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["_class_path"] == "models.ImageClassifier"
    model = load_module(checkpoint, {}, ClassificationModule)
    assert type(model) is ImageClassifier and model.hparams.norm == "l2bn"


def test_the_network_files_import_only_the_network_stack():
    """The layer contract over the import graph: ``models/`` imports torch, torchvision, torchaudio,
    timm, numpy, soundfile, the standard library, the layer family and the weights-only loader; never
    Lightning, the data modules, the LightningModules or a command."""
    allowed = ("torch", "torchvision", "torchaudio", "timm", "numpy", "soundfile", "models", "l2bn_lit.nn",
               "l2bn_lit.serialization")
    for path in sorted((ROOT / "models").glob("*.py")):
        outside = {name for name in _imports(path)
                   if name.split(".")[0] not in sys.stdlib_module_names and name != "l2bn_lit" and not name.startswith(allowed)}
        assert not outside, f"models/{path.name} imports {sorted(outside)}"
