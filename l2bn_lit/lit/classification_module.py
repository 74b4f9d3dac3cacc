"""The shared classification LightningModule of the image and audio pipelines.

Subclasses declare the network's settings (architecture, norm, front-end), build the network from
them and hand it to :class:`ClassificationModule`, naming the hyperparameters that define it
(``architecture_keys``); everything else — initialization, loss, mixup/cutmix, optimizer and
schedule, metrics, the test report, checkpoint checks — lives here once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchvision.transforms import v2

from l2bn_lit.nn import NORM_TYPES
from l2bn_lit.nn.init import initialize
from l2bn_lit.reports.plots import plot_confusion
from l2bn_lit.serialization import load_checkpoint

__all__ = ["ClassificationModule", "CheckpointMismatchError", "NonFiniteLossError", "check_top_k", "run_folder"]


def run_folder(trainer: pl.Trainer) -> Path:
    """The run's folder (the first logger's, else ``default_root_dir``). Under DDP this is a
    collective (``trainer.log_dir`` broadcasts): every rank must call it, not only rank zero."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class CheckpointMismatchError(ValueError):
    """A checkpoint's architecture or normalization differs from the model it is loaded into."""


class NonFiniteLossError(RuntimeError):
    """The training or validation loss became NaN or infinite: the run stops rather than select a
    checkpoint from meaningless metrics."""


def check_top_k(metrics: MetricCollection) -> None:
    """Raises ``RuntimeError`` when a collection's top-k accuracy is below its top-1 accuracy, which
    no correct computation gives (a merged or mis-updated metric). Call it where the epoch's metrics
    are final: the values are computed (and cached for the logger) here."""
    prefix = metrics.prefix or ""
    top_k = [name for name in metrics.keys(keep_base=True) if name.startswith("acc_top")]
    if "acc" not in metrics.keys(keep_base=True) or not top_k or metrics["acc"].update_count == 0:
        return
    top1 = float(metrics["acc"].compute())
    for name in top_k:
        value = float(metrics[name].compute())
        if value < top1 - 1e-6:
            raise RuntimeError(
                f"{prefix}{name}={value:.6f} is below {prefix}acc={top1:.6f}: the metrics were computed wrongly"
            )


class ClassificationModule(pl.LightningModule):
    """Cross-entropy classification of ``network``'s logits ``(N, num_classes)``.

    Args:
        network: the network a subclass built from its own settings (not a hyperparameter: the
            settings it was built from are).
        num_classes: number of classes (linked from the datamodule by the CLI).
        input_shape: shape of one input sample, e.g. ``[3, 32, 32]`` (linked from the datamodule).
        sample_rate: samples per second of audio input (linked from the datamodule; None for images).
        init: convolution initialization (:func:`l2bn_lit.nn.init.initialize`): ``arch`` (the
            architecture's own; He's ``kaiming_fan_out`` for the CIFAR ResNets), ``torch`` (PyTorch's
            default), ``kaiming_fan_out`` or ``kaiming_fan_in``.
        optimizer: ``sgd`` (momentum, nesterov) or ``adamw``.
        lr, momentum, nesterov, weight_decay: optimizer settings.
        norm_weight_decay: weight decay of the normalization layers' parameters; ``None`` applies
            ``weight_decay`` (torchvision's reference scripts' option; their default is ``None``,
            this project's is 0).
        bias_weight_decay: weight decay of the other layers' biases (every other 1-D parameter);
            ``None`` applies ``weight_decay``.
        schedule: ``multistep`` (``milestones`` in epochs, ``gamma``; the ResNet-CIFAR recipe),
            ``cosine`` (per step, after ``warmup_epochs`` of linear warm-up from 1% of ``lr``, or after
            ``warmup_steps`` optimizer steps of linear warm-up from 0 with :class:`WarmupCosine`, the DCASE
            2024/2025 baselines' schedule), ``cosine_restarts``
            (SGDR: first period ``restart_epochs``, each next one ``restart_mult`` times longer; the
            DCASE ResNet recipe), ``onecycle`` (``torch.optim.lr_scheduler.OneCycleLR`` to ``lr``, warming
            up over the first ``pct_start`` of the steps; with ``cycle_momentum`` SGD's momentum cycles
            between 0.85 and 0.95 against the learning rate, replacing ``momentum``) or ``constant``.
        label_smoothing: cross-entropy label smoothing.
        mixup_alpha, cutmix_alpha: batch mixup / cutmix (torchvision's), off at 0; both on picks one per batch.
        class_names: names for the per-class report (default: class indices).
        compile: ``torch.compile`` the network: ``false``, ``true`` (the default mode) or a mode name
            (``reduce-overhead``, ``max-autotune``, ...). The network is compiled in place
            (``nn.Module.compile``), so checkpoints keep the plain state-dict keys and load into an
            uncompiled model and back.
        channels_last: keep the network's weights and 4-D input batches in channels_last memory
            format (faster convolutions on GPUs with tensor cores, and under ``torch.compile``).
        init_from: a checkpoint of this project whose network weights start this model (fine-tuning,
            e.g. a device-specific model from a general one); its architecture and norm must be this
            model's (else :class:`CheckpointMismatchError`). Not a resume: optimizer and epoch start anew.
    """

    #: hyperparameters that define the network; a checkpoint must agree with the model on them
    architecture_keys: tuple[str, ...] = ("num_classes", "class_names", "input_shape", "sample_rate")

    def __init__(
        self,
        network: nn.Module,
        num_classes: int,
        input_shape: list[int] | None = None,
        sample_rate: int | None = None,
        init: Literal["arch", "torch", "kaiming_fan_out", "kaiming_fan_in"] = "arch",
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        norm_weight_decay: float | None = 0.0,
        bias_weight_decay: float | None = 0.0,
        schedule: Literal["multistep", "cosine", "cosine_restarts", "onecycle", "constant"] = "cosine",
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        warmup_epochs: float = 0.0,
        warmup_steps: int | None = None,
        restart_epochs: int = 2,
        restart_mult: int = 2,
        pct_start: float = 0.3,
        cycle_momentum: bool = True,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        class_names: list[str] | None = None,
        compile: bool | str = False,
        channels_last: bool = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = initialize(network, init)
        if init_from is not None:
            self._load_network_weights(init_from)
        if channels_last:
            self.network.to(memory_format=torch.channels_last)
        if compile:
            try:
                self.network.compile(**({} if compile is True else {"mode": compile}))
            except RuntimeError as error:  # torch names the modes it accepts
                raise ValueError(f"compile={compile!r}: {error}") from error
        self.mix = self._batch_mix(num_classes, mixup_alpha, cutmix_alpha)
        top5 = min(5, num_classes)
        metrics = {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "acc_macro": MulticlassAccuracy(num_classes, average="macro"),  # mean class-wise accuracy (DCASE's rank)
            f"acc_top{top5}": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
        }
        # compute_groups=False: torchmetrics would otherwise merge metrics whose states happen to be equal
        # after the first batch (an all-correct one makes top-5 and macro accuracy look alike), and the
        # merged metric then reports the other one's value for the whole epoch
        self.val_metrics = MetricCollection(metrics, prefix="val/", compute_groups=False)
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.test_per_class = MulticlassAccuracy(num_classes, average=None)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    @staticmethod
    def _batch_mix(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> nn.Module | None:
        mixes = []
        if mixup_alpha > 0:
            mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not mixes:
            return None
        return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    @classmethod
    def saved_architecture(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's hyperparameters as this class names them (subclasses map older names)."""
        return saved

    def _load_network_weights(self, path: str) -> None:
        checkpoint = load_checkpoint(path)
        saved = self.saved_architecture(checkpoint.get("hyper_parameters", {}))
        mismatches = architecture_mismatches(dict(self.hparams), saved, self.architecture_keys)
        if mismatches:
            raise CheckpointMismatchError(
                f"init_from={path}: the checkpoint's network differs from this model's: {mismatches}"
            )
        state = {k.removeprefix("network."): v for k, v in checkpoint["state_dict"].items() if k.startswith("network.")}
        self.network.load_state_dict(state)

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.mix is not None:
            # torchvision's batch mixes take (N, C, H, W): waveforms (N, L) ride along as (N, 1, 1, L)
            shape = x.shape
            mixed, y = self.mix(x.reshape(shape[0], -1, 1, shape[-1]) if x.dim() < 4 else x, y)
            x = mixed.reshape(shape)  # y is now (N, num_classes) probabilities
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self._stop_if_not_finite(loss, "training", batch_idx)
        hard = y.argmax(1) if y.dim() == 2 else y
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == hard).float().mean(), prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if not self.trainer.sanity_checking:
            self._stop_if_not_finite(loss, "validation", batch_idx)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.val_metrics.update(logits, y)
        self.log_dict(self.val_metrics, prog_bar=True)

    def _stop_if_not_finite(self, loss: Tensor, stage: str, batch_idx: int) -> None:
        """Raises :class:`NonFiniteLossError` when ``loss`` is NaN or infinite on any process (a
        collective under DDP, so that every process stops at the same step)."""
        value = loss.detach()
        bad = not bool(torch.isfinite(value))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteLossError(
                f"the {stage} loss is {float(value)} at epoch {self.current_epoch}, global step {self.global_step}, "
                f"batch {batch_idx}: training diverged. Likely causes: a learning rate too high for this model "
                f"(lr={self.hparams.lr}), float16 overflow (use --trainer.precision bf16-mixed or 32), or "
                "non-finite inputs. No checkpoint was chosen from this epoch; lower the learning rate (or add "
                "warm-up) and start again, or resume from the run's last.ckpt with the fix."
            )

    def on_validation_epoch_end(self) -> None:
        check_top_k(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        check_top_k(self.test_metrics)
        self._write_test_outputs()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Updates the test metrics; returns the logits ``(N, num_classes)`` for subclasses' reports."""
        x, y = batch
        logits = self(x)
        self.log("test/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.test_metrics.update(logits, y)
        self.test_per_class.update(logits, y)
        self.test_confusion.update(logits, y)
        self.log_dict(self.test_metrics)
        return logits

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).float().softmax(1)

    def _write_test_outputs(self) -> None:
        per_class = self.test_per_class.compute().cpu()
        confusion = self.test_confusion.compute().cpu()
        self.test_per_class.reset()
        self.test_confusion.reset()
        folder = run_folder(self.trainer)
        if self.trainer.is_global_zero and not self.trainer.fast_dev_run:  # fast_dev_run writes nothing
            self.write_test_report(per_class, confusion, folder)

    def write_test_report(self, per_class: Tensor, confusion: Tensor, folder: Path) -> None:
        """Writes ``per_class_accuracy.csv``, ``confusion_matrix.csv`` and ``confusion_matrix.png``."""
        names = self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes)]
        folder.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame({"class": names, "accuracy": per_class.numpy(), "support": confusion.sum(1).numpy()})
        table.to_csv(folder / "per_class_accuracy.csv", index=False)
        pd.DataFrame(confusion.numpy(), index=names, columns=names).to_csv(folder / "confusion_matrix.csv")
        plot_confusion(confusion.numpy(), names, folder / "confusion_matrix.png")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.parameter_groups()
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        scheduler = self._scheduler(optimizer)
        if scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: weights at ``weight_decay``, the norm layers' parameters
        at ``norm_weight_decay`` and the other biases at ``bias_weight_decay`` (``None``: ``weight_decay``).

        One group per distinct decay, weights first, parameters in module order (the defaults give the
        same two groups as before these options existed, so older runs resume)."""
        hp = self.hparams
        norm_decay = hp.weight_decay if hp.norm_weight_decay is None else hp.norm_weight_decay
        bias_decay = hp.weight_decay if hp.bias_weight_decay is None else hp.bias_weight_decay
        groups: dict[float, list[nn.Parameter]] = {hp.weight_decay: []}
        for module in self.network.modules():
            for param in module.parameters(recurse=False):
                if param.requires_grad:
                    decay = (
                        norm_decay
                        if isinstance(module, NORM_TYPES)
                        else bias_decay
                        if param.ndim <= 1
                        else hp.weight_decay
                    )
                    groups.setdefault(decay, []).append(param)
        return [{"params": params, "weight_decay": decay} for decay, params in groups.items() if params]

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        hp = self.hparams
        if hp.schedule == "constant":
            return None
        if hp.schedule == "multistep":
            milestones = hp.milestones if hp.milestones is not None else [100, 150]
            return {
                "scheduler": torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, hp.gamma),
                "interval": "epoch",
            }
        total = int(self.trainer.estimated_stepping_batches)
        if hp.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=total, pct_start=hp.pct_start, cycle_momentum=hp.cycle_momentum
            )
            return {"scheduler": scheduler, "interval": "step"}
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        if hp.schedule == "cosine_restarts":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                optimizer, T_0=hp.restart_epochs * steps_per_epoch, T_mult=hp.restart_mult
            )
            return {"scheduler": scheduler, "interval": "step"}
        if hp.warmup_steps is not None:  # the DCASE 2024/2025 baselines' schedule
            return {
                "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(hp.warmup_steps, total)),
                "interval": "step",
            }
        warmup = min(int(hp.warmup_epochs * steps_per_epoch), total - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
        if warmup == 0:
            return {"scheduler": cosine, "interval": "step"}
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-2, total_iters=warmup)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
        return {"scheduler": scheduler, "interval": "step"}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses a checkpoint whose architecture or normalization differs from this model's
        (BN and L2BN checkpoints have identical keys, so loading would silently succeed)."""
        saved = self.saved_architecture(checkpoint.get("hyper_parameters", {}))
        mismatches = architecture_mismatches(dict(self.hparams), saved, self.architecture_keys)
        if mismatches:
            raise CheckpointMismatchError(
                "the checkpoint was trained with a different architecture or normalization than this "
                f"model: {mismatches}. Build the model from the checkpoint's settings (drop the "
                "conflicting options, or pass the config the checkpoint was trained with)."
            )


class WarmupCosine:
    """The learning-rate factor of ``transformers.get_cosine_schedule_with_warmup`` (the DCASE 2024/2025
    baselines' schedule): ``step / warmup`` during the warm-up (from 0), then a cosine from 1 to 0 over
    the remaining steps. A plain object, so LambdaLR saves its state (two ints) in checkpoints."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def architecture_mismatches(current: dict[str, Any], saved: dict[str, Any], keys: tuple[str, ...]) -> str:
    """``"key: model=... checkpoint=..."`` for each of ``keys`` that both define and differ on (for a
    setting made of several, e.g. ``frontend``, each differing part: ``frontend.n_mels: ...``)."""
    diffs = []
    for key in keys:
        if key not in saved:
            continue
        mine, theirs = _normalized(current.get(key)), _normalized(saved.get(key))
        if mine == theirs:
            continue
        if isinstance(mine, dict) and isinstance(theirs, dict) and mine and theirs:
            parts = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
            diffs += [f"{key}.{part}: model={mine.get(part)!r} checkpoint={theirs.get(part)!r}" for part in parts]
        else:
            diffs.append(f"{key}: model={current.get(key)!r} checkpoint={saved.get(key)!r}")
    return "; ".join(diffs)


def _normalized(value: Any) -> Any:
    return {} if value is None else dict(value) if isinstance(value, dict) else value
