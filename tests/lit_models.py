"""Tiny LightningModules for the Lightning/DDP tests (importable by spawned processes)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from l2bn_lit import L2BN2d, SyncL2BN


class TinyL2BNNet(pl.LightningModule):
    """conv -> L2BN2d -> ReLU -> pool -> linear, SGD. Input ``(N, 3, 8, 8)``, 4 classes."""

    def __init__(self, lr: float = 0.5, batch_size: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3), L2BN2d(6, rescale=True), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self) -> DataLoader:
        return _sharded_loader(self.trainer, self.hparams.batch_size)


def _sharded_loader(trainer: pl.Trainer, batch_size: int) -> DataLoader:
    """32 fixed random samples, sharded rank::world_size without shuffling (Lightning's own
    DistributedSampler shuffles training data)."""
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 3, 8, 8, generator=gen) * 3 + 1, torch.randint(0, 4, (32,), generator=gen))
    shard = torch.arange(trainer.global_rank, len(data), trainer.world_size)
    return DataLoader(torch.utils.data.Subset(data, shard), batch_size=batch_size)


class AssertSynced(Callback):
    """Fails the run unless every L2BN layer is a SyncL2BN while training."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        norms = [m for m in pl_module.modules() if isinstance(m, L2BN2d | SyncL2BN)]
        if not norms or not all(type(m) is SyncL2BN for m in norms):
            raise AssertionError(f"expected SyncL2BN layers, got {[type(m).__name__ for m in norms]}")
