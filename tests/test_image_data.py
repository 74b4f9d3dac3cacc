"""Datamodules on tiny data in the real on-disk formats, and one step of every config."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from datamodules import CIFARDataModule, ImageFolderDataModule
from l2bn_lit.lit.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
#: configs that only add to another (``--config BASE --config OVERLAY``), with their base
OVERLAYS = {
    "dcase2025_task1_device_finetune.yaml": ROOT / "configs" / "dcase2024_task1_cpmobile.yaml",
    "dcase_baseline_protocol.yaml": ROOT / "configs" / "dcase2024_task1_cpmobile.yaml",
}
#: what an overlay needs on the synthetic set (which has no split_setup/)
OVERLAY_OPTIONS = {"dcase_baseline_protocol.yaml": ["--data.init_args.val_list", "evaluation_setup/fold1_evaluate.csv"]}


def _write_image_folder(root: Path, classes=("cat", "dog", "ship"), per_class=(8, 3)) -> Path:
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (rng.random((40, 40, 3)) * 60 + 60 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg")
    return root


def _write_cifar10(root: Path, per_batch: int = 6) -> Path:
    """The cifar-10-batches-py pickle layout that torchvision.datasets.CIFAR10 reads."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, per_batch)),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


def _write_cifar100(root: Path, count: int = 12) -> Path:
    """The cifar-100-python pickle layout that torchvision.datasets.CIFAR100 reads."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        split = {
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "fine_labels": list(rng.integers(0, 100, count)),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(split, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, f)
    return root


@pytest.fixture
def cifar_root(tmp_path, monkeypatch) -> Path:
    """CIFAR-10 and CIFAR-100 in one root. The files are in the real format; only torchvision's
    md5 checks against the real archives are skipped."""
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr("torchvision.datasets.CIFAR10._check_integrity", lambda self: True)
    root = _write_cifar10(tmp_path / "cifar")
    return _write_cifar100(root)


def test_image_folder_datamodule_reads_the_layout(tmp_path):
    data = ImageFolderDataModule(
        str(_write_image_folder(tmp_path)), test_split="test", image_size=32, batch_size=4, val_fraction=0.25
    )
    assert data.class_names == ["cat", "dog", "ship"] and data.num_classes == 3 and data.input_shape == [3, 32, 32]
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (18, 6, 9)
    assert not set(data.train_set.indices) & set(data.val_set.indices)
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.max() < 3


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path / 'nowhere' / 'train'} does not exist"):
        ImageFolderDataModule(str(tmp_path / "nowhere"))
    root = _write_image_folder(tmp_path / "data")
    bad = root / "train" / "dog" / "0001.jpg"
    bad.write_bytes(b"not a jpeg")
    data = ImageFolderDataModule(str(root), test_split="test", image_size=32, batch_size=32)
    data.setup()
    with pytest.raises(RuntimeError, match="cannot read image file .*0001.jpg"):
        list(data.train_dataloader()) + list(data.val_dataloader())


def test_cifar_datamodule_reads_torchvision_format(cifar_root):
    data = CIFARDataModule(str(cifar_root), batch_size=4, val_fraction=0.2)
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (24, 6, 6)
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)


def test_missing_cifar_names_the_folder_and_the_download_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"under root='{tmp_path}'.*download true"):
        CIFARDataModule(str(tmp_path)).setup()


def _data_overrides(config: Path, cifar_root: Path, folder_root: Path) -> list[str]:
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"]
    common = ["--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"]
    if data_class == "datamodules.DigitsDataModule":
        return []
    if data_class == "datamodules.TAUScenesDataModule":  # the synthetic set, written into the test's folder
        return [
            "--data.init_args.root",
            str(folder_root.parent / "tau"),
            "--data.init_args.synthesize_if_missing",
            "true",
            "--data.init_args.train_list",
            "evaluation_setup/fold1_train.csv",  # the synthetic set has no split_setup/
            "--data.init_args.test_list",
            "evaluation_setup/fold1_evaluate.csv",
            "--data.init_args.sample_rate",
            "16000",
            "--data.init_args.duration",
            "1.0",
            "--data.init_args.batch_size",
            "8",
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.persistent_workers",
            "false",
        ]
    if data_class == "datamodules.CIFARDataModule":
        return [*common, "--data.init_args.root", str(cifar_root), "--data.init_args.persistent_workers", "false"]
    if data_class == "datamodules.ImageFolderDataModule":
        size = "40" if "on_device: true" in config.read_text() else "32"  # on_device keeps the stored 40x40 size
        return [
            *common,
            "--data.init_args.root",
            str(folder_root),
            "--data.init_args.test_split",
            "test",
            "--data.init_args.image_size",
            size,
            "--data.init_args.persistent_workers",
            "false",
        ]
    raise AssertionError(f"{config.name}: no test fixture for {data_class}")


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses_and_runs_one_step(config, cifar_root, tmp_path):
    folder_root = _write_image_folder(tmp_path / "folder")
    base = OVERLAYS.get(config.name)
    configs = ["--config", str(base), "--config", str(config)] if base else ["--config", str(config)]
    args = [
        "fit",
        *configs,
        "--trainer.fast_dev_run",
        "true",
        "--trainer.accelerator",
        "cpu",
        "--trainer.precision",
        "32",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    cli = main(args + _data_overrides(base or config, cifar_root, folder_root) + OVERLAY_OPTIONS.get(config.name, []))
    assert cli.trainer.state.finished
    assert "test/acc" in cli.trainer.callback_metrics
