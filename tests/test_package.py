"""The package's shape: the layers hold (import-linter's contracts in pyproject.toml), the layer family
and the networks load without Lightning, the paths from before the folders still resolve, and one
console entry point runs every command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from processes import run_together

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "l2bn_lit"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_layer_family_loads_without_lightning_or_the_pipelines():
    result = _run(
        "import sys, l2bn_lit, l2bn_lit.nn\n"
        "from l2bn_lit import L2BN2d, SyncL2BN, convert_norm, l2_batch_norm\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', "
        "'lightning_fabric',\n"
        "             'datamodules', 'models', 'torchmetrics') or m.startswith(('l2bn_lit.lit', "
        "'l2bn_lit.commands')))\n"
        "print(bad); assert not bad"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_contracts_hold():
    """``lint-imports`` (import-linter) over the contracts of pyproject.toml: the layers, the layer family
    on torch only, no Lightning in the networks and reports, no command importing another."""
    linter = shutil.which("lint-imports")
    if linter is None:
        pytest.skip("import-linter is a dev dependency: pip install -e '.[dev]'")
    result = subprocess.run([linter, "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


def test_the_project_itself_uses_the_current_module_paths():
    """The old paths are for users' configs and checkpoints; the project's own code imports the new ones
    (an import through the table would hide a module that no longer exists)."""
    import ast

    from l2bn_lit._moved import MOVED

    for path in sorted(
        p for folder in ("l2bn_lit", "models", "datamodules", "benchmarks") for p in (ROOT / folder).rglob("*.py")
    ):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        assert not names & set(MOVED), f"{path.relative_to(ROOT)} imports {sorted(names & set(MOVED))}"


def test_one_file_name_per_job():
    """No two modules of the package share a name (a datamodule and a report both called dcase.py, say)."""
    names = [p.name for folder in ("l2bn_lit", "models", "datamodules") for p in (ROOT / folder).rglob("*.py")]
    repeated = sorted({name for name in names if names.count(name) > 1} - {"__init__.py"})
    assert not repeated, repeated


def test_the_code_passes_ruff():
    """The linter and the formatter (pyproject.toml [tool.ruff]: lines <= 120), as .ci/run runs them."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is a dev dependency: pip install -e '.[dev]'")
    for command in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([ruff, *command], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout[-4000:]}"


def test_the_module_paths_from_before_the_folders_resolve():
    """Configs, saved run configs and checkpoints name ``l2bn_lit.analysis.FeatureNormMonitor``,
    ``l2bn_lit.csv_logger.RunCSVLogger``, ...; results/ records ``python -m l2bn_lit.sweep`` commands."""
    modules, old_command = run_together(
        [
            sys.executable,
            "-c",
            "import importlib, l2bn_lit\n"
            "from l2bn_lit._moved import MOVED\n"
            "for old, new in MOVED.items():\n"
            "    assert importlib.import_module(old) is importlib.import_module(new), old\n"
            "from l2bn_lit.analysis import FeatureNormMonitor\n"
            "from l2bn_lit.lit.callbacks import FeatureNormMonitor as moved\n"
            "assert FeatureNormMonitor is moved\n",
        ],
        [sys.executable, "-m", "l2bn_lit.results", "--help"],
        cwd=ROOT,
        timeout=120,
    )
    assert modules.returncode == 0, modules.stdout + modules.stderr
    assert old_command.returncode == 0 and "l2bn results RUNS_FOLDER" in old_command.stdout, old_command.stderr


def test_entry_point_runs_every_command():
    """``l2bn --help`` and a mistyped command answer without importing Lightning (seconds, not ten);
    ``l2bn fit`` trains."""
    no_lightning = "assert not any(m.split('.')[0] in ('pytorch_lightning', 'lightning_fabric') for m in sys.modules)"
    help_text, unknown, fit = run_together(
        [sys.executable, "-c", f"import sys; from l2bn_lit.__main__ import main; main(['--help']); {no_lightning}"],
        [
            sys.executable,
            "-c",
            f"import sys; from l2bn_lit.__main__ import main\ntry: main(['train'])\nfinally: {no_lightning}",
        ],
        [
            sys.executable,
            "-m",
            "l2bn_lit",
            "fit",
            "--config",
            "configs/quickstart.yaml",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=ROOT,
        timeout=300,
    )
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    for command in ("fit", "sweep", "ablation", "results", "complexity", "data", "evaluate", "package"):
        assert f"l2bn {command}" in help_text.stdout
    assert unknown.returncode == 1 and "unknown command 'train'" in unknown.stderr, unknown.stderr[-2000:]
    assert "AssertionError" not in unknown.stderr
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
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', "
        "'lightning_fabric',\n"
        "             'torchmetrics', 'matplotlib', 'datamodules') or m.startswith('l2bn_lit.') and not\n"
        "             m.startswith(('l2bn_lit.nn', 'l2bn_lit.serialization', 'l2bn_lit._moved')))\n"
        "print(bad); assert not bad\n"
        "from models import ImageClassifier, AudioSceneClassifier\n"
        "import l2bn_lit.lit as lit\n"
        "assert ImageClassifier is lit.ImageClassifier and AudioSceneClassifier is lit.AudioSceneClassifier\n"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_checkpoint_naming_the_old_class_path_loads(tmp_path):
    """A run's checkpoint whose saved class path is the pre-move ``models.ImageClassifier`` (what the
    code before the move wrote) is loaded by ``l2bn evaluate``'s loader as the image classifier."""
    from l2bn_lit.lit import ImageClassifier
    from l2bn_lit.lit.classification_module import ClassificationModule
    from l2bn_lit.lit.cli import main as cli_main
    from l2bn_lit.lit.loading import load_module

    cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--model.class_path",
            "models.ImageClassifier",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["_class_path"] == "models.ImageClassifier"
    model = load_module(checkpoint, {}, ClassificationModule)
    assert type(model) is ImageClassifier and model.hparams.norm == "l2bn"
