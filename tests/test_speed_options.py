"""The speed levers of ClassificationModule: ``compile`` and ``channels_last``, and the loader defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules import DigitsDataModule
from datamodules.base import default_num_workers
from models import ImageClassifier


def _model(**options) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(num_classes=10, input_shape=[1, 8, 8], arch="small_cnn", lr=0.05, **options)


def _fit_and_test(model: ImageClassifier, tmp_path: Path) -> tuple[pl.Trainer, dict[str, float]]:
    pl.seed_everything(0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=8,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        deterministic=True,
    )
    data = DigitsDataModule(batch_size=64)
    trainer.fit(model, datamodule=data)
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    return trainer, metrics


def test_compiled_fit_matches_eager_and_checkpoints_interchange(tmp_path):
    _, eager = _fit_and_test(_model(), tmp_path / "eager")
    trainer, compiled = _fit_and_test(_model(compile=True), tmp_path / "compiled")
    assert compiled["test/loss"] == pytest.approx(eager["test/loss"], rel=1e-3, abs=1e-4)
    assert compiled["test/acc"] == pytest.approx(eager["test/acc"], abs=0.01)

    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    keys = list(ckpt["state_dict"])
    assert not any("_orig_mod" in k for k in keys), keys[:3]
    plain = _model()
    plain.load_state_dict(ckpt["state_dict"])  # compiled -> eager
    _model(compile=True).load_state_dict(plain.state_dict())  # and back
    x = torch.randn(5, 1, 8, 8)
    plain.eval()
    compiled_model = _model(compile=True)
    compiled_model.load_state_dict(plain.state_dict())
    torch.testing.assert_close(compiled_model.eval()(x), plain(x), rtol=1e-4, atol=1e-5)


def test_compile_mode_names_are_checked():
    with pytest.raises(ValueError, match="compile='fastest'"):
        _model(compile="fastest")


def test_channels_last_model_and_batches(tmp_path):
    model = _model(channels_last=True)
    convs = [m for m in model.network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    _, metrics = _fit_and_test(model, tmp_path)
    _, eager = _fit_and_test(_model(), tmp_path / "contiguous")
    assert metrics["test/loss"] == pytest.approx(eager["test/loss"], rel=1e-3, abs=1e-4)

    seen = []
    model.network.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(torch.randn(4, 1, 8, 8))
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_default_num_workers():
    assert default_num_workers(None) == 0
    cpu = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    assert default_num_workers(cpu) == 0
    assert DigitsDataModule(batch_size=8).num_workers is None
