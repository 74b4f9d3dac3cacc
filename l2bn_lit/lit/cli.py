"""The project's LightningCLI.

    python cli.py {fit,validate,test,predict} --config configs/<x>.yaml [--model.norm bn ...]

- models and datamodules by ``class_path`` (subclass mode of ClassificationModule and
  ClassificationDataModule); ``num_classes``, ``input_shape``, ``sample_rate`` and ``class_names``
  are linked from the datamodule to the model, never typed twice;
- ``--trainer.sync_batchnorm true`` installs :class:`l2bn_lit.L2BNLayerSync` (Lightning's own flag
  would silently turn L2BN into plain SyncBatchNorm);
- a CSV logger always, TensorBoard as well when installed, the Rich progress bar, and checkpoints of
  the best (by ``val/acc``, ties broken by the lower ``val/loss``) and the last epoch; the resolved config is saved
  in the run folder. The
  default loggers write under ``--trainer.default_root_dir`` when it is given, else under ``runs/``;
- ``--ckpt_path`` with options that contradict the checkpoint's architecture, norm or front-end is
  an error;
- ``fit --test_after_fit true`` tests the best checkpoint at the end of fit (``--test_ckpt last``: the
  last epoch's weights, also used when there is no validation set);
- ``complexity.json`` (parameters, MACs for one input) is written into each run folder;
- runs survive a cluster (docs/runs.md): ``last.ckpt`` every epoch, written atomically
  (:class:`~l2bn_lit.lit.checkpoint.AtomicCheckpointIO`); SIGTERM/SIGUSR1 save it and exit 143/138
  (:class:`~l2bn_lit.lit.resume.PreemptionCheckpoint`); random states in every checkpoint
  (:class:`~l2bn_lit.lit.resume.RNGStateCheckpoint`); ``fit --ckpt_path <run>/checkpoints/last.ckpt``
  continues in that run folder; every checkpoint is read weights-only; option and config mistakes
  print a short error (``--debug`` for the traceback).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NoReturn

import pytorch_lightning as pl
from jsonargparse import ActionConfigFile
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.plugins.layer_sync import LayerSync

from datamodules.base import ClassificationDataModule
from l2bn_lit.errors import debugging, tidy_parser_message
from l2bn_lit.serialization import load_checkpoint

from .callbacks import ComplexityReport
from .checkpoint import AtomicCheckpointIO, TieBreakingCheckpoint
from .classification_module import CheckpointMismatchError, ClassificationModule, architecture_mismatches
from .layer_sync import L2BNLayerSync
from .resume import PreemptionCheckpoint, RNGStateCheckpoint

__all__ = ["L2BNLightningCLI", "default_loggers", "with_l2bn_layer_sync", "main"]

log = logging.getLogger(__name__)


def with_l2bn_layer_sync(plugins: Any) -> list[Any]:
    """Trainer ``plugins`` with :class:`L2BNLayerSync` added (once).

    Raises:
        ValueError: if another LayerSync plugin is present; two cannot both convert the norms.
    """
    plugins = _plugin_list(plugins)
    others = [type(p).__name__ for p in plugins if isinstance(p, LayerSync) and not isinstance(p, L2BNLayerSync)]
    if others:
        raise ValueError(
            f"--trainer.sync_batchnorm true installs L2BNLayerSync, which replaces the LayerSync "
            f"plugin(s) {', '.join(others)} given in --trainer.plugins: remove one of the two"
        )
    if not any(isinstance(p, L2BNLayerSync) for p in plugins):
        plugins.append(L2BNLayerSync())
    return plugins


def _plugin_list(plugins: Any) -> list[Any]:
    """``--trainer.plugins`` as a list (it may be None, one plugin or several)."""
    return [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]


def with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """Trainer ``plugins`` with :class:`AtomicCheckpointIO` added, unless a CheckpointIO is given."""
    plugins = _plugin_list(plugins)
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


#: model arguments linked from the datamodule (checked against the checkpoint when it is loaded)
LINKED = ("num_classes", "input_shape", "sample_rate", "class_names")

#: ``--ckpt_path`` values that Lightning resolves itself (no file to check beforehand)
LIGHTNING_CKPT_NAMES = ("best", "last", "hpc", "registry")


def _init_defaults(cls: type) -> dict[str, Any]:
    """Default values of the ``__init__`` arguments of ``cls`` and its bases."""
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.default is not inspect.Parameter.empty:
                defaults[param.name] = param.default
    return defaults


def default_loggers(save_dir: str = "runs") -> list[dict[str, Any]]:
    """CSV always (machine-readable metrics per run); TensorBoard too when a backend is installed.

    The run folder (config, checkpoints, metrics.csv, test reports) is ``<save_dir>/csv/version_<n>``.
    """
    loggers = [
        {"class_path": "l2bn_lit.lit.csv_logger.RunCSVLogger", "init_args": {"save_dir": save_dir, "name": "csv"}}
    ]
    if any(importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")):
        tensorboard = {"save_dir": save_dir, "name": "tensorboard"}
        loggers.append({"class_path": "pytorch_lightning.loggers.TensorBoardLogger", "init_args": tensorboard})
    return loggers


def _is_default_logger(logger: Any) -> bool:
    """Whether a parsed logger entry is one of :func:`default_loggers` as set by default."""
    defaults = {(d["class_path"], d["init_args"]["name"]) for d in default_loggers()}
    init_args = getattr(logger, "init_args", None)
    return (
        init_args is not None
        and (getattr(logger, "class_path", None), init_args.get("name")) in defaults
        and init_args.get("save_dir") == "runs"
    )


class ShortErrorParser(LightningArgumentParser):
    """The CLI's parser: a mistake in the options or config prints the error (tidied) and a pointer to
    ``--help``, not the usage of every option; ``--debug`` raises it instead."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debugging():
            super().error(message, ex)
        sys.stderr.write(f"error: {tidy_parser_message(message)}\n(every option: {self.prog} --help)\n")
        raise SystemExit(2)


def resumed_run_folder(ckpt_path: str | None) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/<name>.ckpt`` beside the run's
    ``metrics.csv``), or ``None``."""
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES:
        return None
    folder = Path(ckpt_path).parent
    return folder.parent if folder.name == "checkpoints" and (folder.parent / "metrics.csv").is_file() else None


class L2BNLightningCLI(LightningCLI):
    """LightningCLI for the classification pipelines (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._default_callbacks = list(kwargs.get("trainer_defaults", {}).get("callbacks", []))
        self._checkpoint: dict[str, Any] | None = None  # the --ckpt_path file's epoch and step
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = ShortErrorParser(**kwargs)
        parser.add_argument(
            "-c", "--config", action=ActionConfigFile, help="Path to a configuration file in json or yaml format."
        )
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source in LINKED:
            parser.link_arguments(f"data.{source}", f"model.init_args.{source}", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit", type=bool, default=False, help="fit: test a checkpoint at the end (--test_ckpt)"
        )
        parser.add_argument(
            "--test_ckpt",
            type=Literal["best", "last"],
            default="best",
            help="with --test_after_fit: the best validation checkpoint, or the last epoch's weights (also "
            "what 'best' falls back to when there is no validation set: --data.init_args.val_fraction 0)",
        )
        parser.set_defaults({"trainer.logger": default_loggers()})

    def before_instantiate_classes(self) -> None:
        """Points the default loggers (given no ``--trainer.logger``) at ``--trainer.default_root_dir``
        when one is set, as Lightning's own default logger follows it; a fit resumed from a checkpoint
        of a run folder continues in that folder (its metrics.csv kept up to the checkpoint's step)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer")
        root = trainer.get("default_root_dir") if trainer is not None else None
        loggers = trainer.get("logger") if trainer is not None else None
        if not isinstance(loggers, list) or not all(_is_default_logger(lg) for lg in loggers):
            return
        run = resumed_run_folder(config.get("ckpt_path")) if self.subcommand == "fit" else None
        for logger in loggers:
            if root is not None:
                logger.init_args.save_dir = str(root)
            if run is not None and logger.class_path.endswith("RunCSVLogger"):
                logger.init_args.save_dir, logger.init_args.name = str(run.parent.parent), run.parent.name
                logger.init_args.version, logger.init_args.resume_step = run.name, self._checkpoint["global_step"]

    def before_fit(self) -> None:
        """Records in the run folder's ``resumes.txt`` which checkpoint a resumed fit continues."""
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if self._checkpoint is None or not self.trainer.is_global_zero or log_dir is None:
            return
        folder = Path(log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        line = (
            f"{datetime.now().isoformat(timespec='seconds')} continued from {self._checkpoint['path']} "
            f"(epoch {self._checkpoint['epoch']}, global step {self._checkpoint['global_step']})\n"
        )
        with open(folder / "resumes.txt", "a") as file:
            file.write(line)

    def _parse_ckpt_path(self) -> None:
        """Refuses a ``--ckpt_path`` whose architecture or norm contradicts the given options,
        before Lightning replaces the model options with the checkpoint's.

        An option left at its default cannot be told from one set to the default value: those
        take the checkpoint's value (the checkpoint then defines the model, as Lightning does).
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        model = self.config[subcommand].get("model") if subcommand else None
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_NAMES:
            checkpoint = load_checkpoint(ckpt_path)  # refuses a missing, corrupt or unsafe file in one line
            self._checkpoint = {
                "path": ckpt_path,
                "epoch": checkpoint.get("epoch"),
                "global_step": checkpoint.get("global_step", 0),
            }
        if (
            ckpt_path
            and model is not None
            and model.get("init_args") is not None
            and ckpt_path not in LIGHTNING_CKPT_NAMES
        ):
            cls = _import(model["class_path"])
            saved = cls.saved_architecture(checkpoint["hyper_parameters"])
            defaults, given = _init_defaults(cls), _plain(model["init_args"])
            keys = tuple(
                k for k in cls.architecture_keys if k not in LINKED and k in given and given[k] != defaults.get(k)
            )
            mismatches = architecture_mismatches(given, saved, keys)
            if mismatches:
                raise CheckpointMismatchError(
                    f"--ckpt_path {ckpt_path} disagrees with the config/options: {mismatches}. Pass the "
                    "config the checkpoint was trained with (or leave these options out: the "
                    "checkpoint's own settings are then used)."
                )
        super()._parse_ckpt_path()

    def after_fit(self) -> None:
        config = self.config[self.subcommand]
        if not config.get("test_after_fit"):
            return
        has_best = any(isinstance(cb, ModelCheckpoint) and cb.best_model_path for cb in self.trainer.callbacks)
        wants_best = config.get("test_ckpt", "best") == "best"
        if wants_best and not has_best:
            log.warning("no best checkpoint (no validation ran, or none was saved): testing the last epoch's weights")
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if wants_best and has_best else None)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = [cb for cb in self._default_callbacks if not isinstance(cb, RichProgressBar)]
        if trainer_config.get("fast_dev_run"):
            # a smoke run saves nothing; Lightning 2.6's ModelCheckpoint.on_train_end would still write
            # last.ckpt, into ./checkpoints since fast_dev_run also disables the logger
            callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
        if trainer_config.get("enable_progress_bar") is not False:  # unless --trainer.enable_progress_bar false
            callbacks.append(RichProgressBar())
        self.trainer_defaults["callbacks"] = callbacks
        if "plugins" not in kwargs:
            plugins = trainer_config.get("plugins")
            if trainer_config.get("sync_batchnorm"):
                plugins = with_l2bn_layer_sync(plugins)
            kwargs["plugins"] = with_atomic_checkpoint_io(plugins)
        return super().instantiate_trainer(**kwargs)


class ModelOnlyCLI(L2BNLightningCLI):
    """Parses a config like the CLI and builds only its model, reading no data where the datamodule can
    state the linked settings from its options (:meth:`ClassificationDataModule.settings_without_data`);
    ``datamodule`` and ``trainer`` are then ``None``. Otherwise everything is built as usual."""

    def instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        data, model = config["data"], config["model"]
        settings = _import(data["class_path"]).settings_without_data(_plain(data["init_args"]))
        if settings is None:
            return super().instantiate_classes()
        self.config_init = self.config
        self.datamodule, self.trainer = None, None
        self.model = _import(model["class_path"])(**{**_plain(model["init_args"]), **settings})


def _import(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _plain(namespace: Any) -> dict[str, Any]:
    """A parsed ``init_args`` namespace as a plain dict."""
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(namespace)


def main(
    args: list[str] | None = None, run: bool = True, cli_class: type[L2BNLightningCLI] = L2BNLightningCLI
) -> L2BNLightningCLI:
    """Entry point of ``cli.py``; ``args``/``run`` as LightningCLI's (for tests and notebooks);
    ``cli_class`` :class:`ModelOnlyCLI` builds the model of a config without its data."""
    return cli_class(
        ClassificationModule,
        ClassificationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "callbacks": [
                TieBreakingCheckpoint(monitor="val/acc", mode="max", save_last=True, filename="best-{epoch}"),
                ComplexityReport(),
                RNGStateCheckpoint(),
                PreemptionCheckpoint(),
            ]
        },
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
