"""The shared ClassificationModule: optimizer groups, schedules, mixup/cutmix, --print_config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from datamodules import DigitsDataModule
from l2bn_lit.lit.cli import main
from models import ImageClassifier

QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")


def _model(**options) -> ImageClassifier:
    return ImageClassifier(num_classes=10, input_shape=[1, 8, 8], arch="small_cnn", **options)


def _fit(model: ImageClassifier, tmp_path: Path, **trainer_options) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **trainer_options,
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    return trainer


@pytest.mark.parametrize("optimizer,cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_no_weight_decay_on_norm_and_bias_parameters(optimizer, cls, tmp_path):
    model = _model(optimizer=optimizer, weight_decay=1e-3, schedule="constant")
    trainer = _fit(model, tmp_path, max_steps=1)
    opt = trainer.optimizers[0]
    assert isinstance(opt, cls)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 1e-3 for p in g["params"]}
    for name, module in model.network.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            expect = not (isinstance(module, nn.modules.batchnorm._BatchNorm) or param.ndim <= 1)
            assert (id(param) in decayed) == expect, f"{name}.{pname}"


def _lrs(model: ImageClassifier, tmp_path: Path, epochs: int) -> list[float]:
    class Record(pl.Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    record = Record()
    _fit(model, tmp_path, max_epochs=epochs, callbacks=[record], limit_val_batches=0)
    return record.lrs


def test_cosine_with_warmup_schedule(tmp_path):
    lrs = _lrs(_model(lr=0.2, schedule="cosine", warmup_epochs=1), tmp_path, epochs=3)
    steps_per_epoch = len(lrs) // 3
    assert lrs[0] == pytest.approx(0.2 * 1e-2)  # linear warm-up from 1% of lr
    assert max(lrs) == pytest.approx(0.2, rel=1e-6)
    assert lrs.index(max(lrs)) == steps_per_epoch  # peak right after warm-up
    total = len(lrs)
    k = total - 1 - steps_per_epoch  # cosine step index of the last batch
    assert lrs[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * k / (total - steps_per_epoch))), rel=1e-6)


def test_multistep_schedule_in_epochs(tmp_path):
    lrs = _lrs(_model(lr=0.1, schedule="multistep", milestones=[1, 2], gamma=0.1), tmp_path, epochs=3)
    per = len(lrs) // 3
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[per] == pytest.approx(0.01)
    assert lrs[2 * per] == pytest.approx(0.001)


def test_onecycle_schedule_peaks_at_lr(tmp_path):
    lrs = _lrs(_model(lr=0.3, schedule="onecycle"), tmp_path, epochs=2)
    assert max(lrs) == pytest.approx(0.3, rel=1e-3)
    assert lrs[0] < 0.3 / 10 and lrs[-1] < 0.3 / 100


def test_onecycle_warmup_share_and_constant_momentum(tmp_path):
    class Record(pl.Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []
            self.momenta: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            group = trainer.optimizers[0].param_groups[0]
            self.lrs.append(group["lr"])
            self.momenta.append(group["momentum"])

    default, fixed = Record(), Record()
    _fit(_model(lr=0.3, schedule="onecycle"), tmp_path, max_epochs=2, callbacks=[default], limit_val_batches=0)
    _fit(
        _model(lr=0.3, schedule="onecycle", pct_start=0.25, cycle_momentum=False, momentum=0.9),
        tmp_path,
        max_epochs=2,
        callbacks=[fixed],
        limit_val_batches=0,
    )
    steps = len(fixed.lrs)
    # torch's OneCycleLR peaks at step round(pct_start * total) - 1
    assert (
        fixed.lrs.index(max(fixed.lrs)) == round(0.25 * steps) - 1
        and default.lrs.index(max(default.lrs)) == round(0.3 * steps) - 1
    )
    assert set(fixed.momenta) == {0.9}
    assert min(default.momenta) == pytest.approx(0.85, abs=1e-3) and max(default.momenta) == pytest.approx(
        0.95, abs=1e-3
    )


@pytest.mark.parametrize(
    "options", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}]
)
def test_mixup_and_cutmix_train_with_soft_targets(options, tmp_path):
    model = _model(label_smoothing=0.1, **options)
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    mixed_x, soft = model.mix(x, y)
    assert soft.shape == (16, 10) and torch.allclose(soft.sum(1), torch.ones(16))
    assert not torch.equal(mixed_x, x)
    trainer = _fit(model, tmp_path, max_steps=3)
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())


def test_print_config_prints_the_resolved_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--model.init_args.norm", "bn", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "norm: bn" in printed and "class_path: l2bn_lit.lit.ImageClassifier" in printed
    assert "num_classes" not in printed  # linked from the datamodule, never typed


def test_cosine_with_warm_restarts_schedule(tmp_path):
    lrs = _lrs(_model(lr=0.1, schedule="cosine_restarts", restart_epochs=1, restart_mult=2), tmp_path, epochs=3)
    per = len(lrs) // 3
    assert lrs[0] == pytest.approx(0.1) and lrs[per] == pytest.approx(0.1)  # restart after 1 epoch
    assert lrs[per - 1] < 0.01  # annealed towards 0 before the restart
    assert lrs[2 * per] == pytest.approx(0.1 * (1 + math.cos(math.pi * per / (2 * per))) / 2)  # mid second period
