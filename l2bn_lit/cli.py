"""The project's LightningCLI: subclass mode for models and data, L2BN-safe ``sync_batchnorm``.

    python cli.py fit --config configs/<x>.yaml [--trainer.sync_batchnorm true ...]
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.plugins.layer_sync import LayerSync

from .layer_sync import L2BNLayerSync

__all__ = ["L2BNLightningCLI", "with_l2bn_layer_sync", "main"]


def with_l2bn_layer_sync(plugins: Any) -> list[Any]:
    """Trainer ``plugins`` with :class:`L2BNLayerSync` added (once).

    Raises:
        ValueError: if another LayerSync plugin is present; two cannot both convert the norms.
    """
    if plugins is None:
        plugins = []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    others = [type(p).__name__ for p in plugins if isinstance(p, LayerSync) and not isinstance(p, L2BNLayerSync)]
    if others:
        raise ValueError(
            f"--trainer.sync_batchnorm true installs L2BNLayerSync, which replaces the LayerSync "
            f"plugin(s) {', '.join(others)} given in --trainer.plugins: remove one of the two"
        )
    if not any(isinstance(p, L2BNLayerSync) for p in plugins):
        plugins.append(L2BNLayerSync())
    return plugins


class L2BNLightningCLI(LightningCLI):
    """LightningCLI whose ``--trainer.sync_batchnorm true`` keeps L2BN layers L2BN.

    Lightning's own ``sync_batchnorm`` turns every batch-norm subclass, L2BN included, into plain
    ``SyncBatchNorm``; here the flag installs :class:`l2bn_lit.L2BNLayerSync` instead (L2BN ->
    SyncL2BN, BN -> SyncBatchNorm on GPU, both reverted after fit).
    """

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("sync_batchnorm") and "plugins" not in kwargs:
            kwargs["plugins"] = with_l2bn_layer_sync(trainer_config.get("plugins"))
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None, run: bool = True) -> L2BNLightningCLI:
    """Entry point of ``cli.py``; ``args``/``run`` as LightningCLI's (for tests and notebooks)."""
    return L2BNLightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
