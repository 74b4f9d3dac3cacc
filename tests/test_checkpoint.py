"""Model selection with ties: the later epoch with the same val/acc and a lower val/loss wins."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from l2bn_lit.lit.checkpoint import TieBreakingCheckpoint

ACC = [0.5, 1.0, 1.0, 1.0, 0.9]
LOSS = [1.0, 0.8, 0.5, 0.6, 0.1]


class _Scripted(pl.LightningModule):
    """Logs the scripted val/acc and val/loss of each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val/acc", ACC[self.current_epoch])
        self.log("val/loss", LOSS[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(callback: ModelCheckpoint, tmp_path, epochs: int = len(ACC), ckpt_path: str | None = None) -> None:
    loader = DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=2)
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(_Scripted(), loader, loader, ckpt_path=ckpt_path)


@pytest.mark.parametrize("cls,best_epoch", [(ModelCheckpoint, 1), (TieBreakingCheckpoint, 2)])
def test_ties_on_accuracy_are_broken_by_validation_loss(cls, best_epoch, tmp_path):
    callback = cls(monitor="val/acc", mode="max", filename="best-{epoch}", dirpath=tmp_path / "ckpt")
    _fit(callback, tmp_path)
    assert callback.best_model_path.endswith(f"best-epoch={best_epoch}.ckpt")
    assert len(list((tmp_path / "ckpt").glob("best-*.ckpt"))) == 1


def test_the_tie_value_survives_a_resume(tmp_path):
    first = TieBreakingCheckpoint(
        monitor="val/acc", mode="max", filename="best-{epoch}", dirpath=tmp_path / "ckpt", save_last=True
    )
    _fit(first, tmp_path, epochs=3)
    assert first.best_tie == pytest.approx(0.5)
    resumed = TieBreakingCheckpoint(
        monitor="val/acc", mode="max", filename="best-{epoch}", dirpath=tmp_path / "ckpt", save_last=True
    )
    _fit(resumed, tmp_path, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.best_model_path.endswith("best-epoch=2.ckpt")  # epoch 3 ties at a higher loss


def test_only_one_best_checkpoint():
    with pytest.raises(ValueError, match="save_top_k=1"):
        TieBreakingCheckpoint(monitor="val/acc", save_top_k=3)


def _epoch_of(path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


def test_lightning_writes_last_ckpt_only_with_a_new_best_and_ours_writes_it_every_epoch(tmp_path):
    """Lightning 2.6's ModelCheckpoint(save_last=True) leaves last.ckpt at the best epoch (here 1 of
    0-4): a resume from it would redo the epochs since. TieBreakingCheckpoint's last.ckpt is epoch 4."""
    lightning = ModelCheckpoint(monitor="val/acc", mode="max", save_last=True, dirpath=tmp_path / "lightning")
    _fit(lightning, tmp_path)
    assert _epoch_of(tmp_path / "lightning" / "last.ckpt") == 1  # the library behaviour this class mends
    ours = TieBreakingCheckpoint(
        monitor="val/acc", mode="max", save_last=True, filename="best-{epoch}", dirpath=tmp_path / "ours"
    )
    _fit(ours, tmp_path)
    assert _epoch_of(tmp_path / "ours" / "last.ckpt") == len(ACC) - 1
    assert ours.best_model_path.endswith("best-epoch=2.ckpt")


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails_and_leaves_nothing(tmp_path, monkeypatch):
    import tempfile

    from l2bn_lit.lit.checkpoint import AtomicCheckpointIO

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "elsewhere"))  # nothing may be written there
    (tmp_path / "elsewhere").mkdir()
    io, path = AtomicCheckpointIO(), tmp_path / "run" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "hyper_parameters": {}}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="killed half-way"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "bad": Unpicklable()}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))  # the old checkpoint, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert not list((tmp_path / "elsewhere").iterdir())
    # a save killed outright leaves its fixed-name partial file; the next save of that checkpoint replaces it
    (path.parent / ".last.ckpt.partial").write_bytes(b"half a checkpoint")
    io.save_checkpoint({"state_dict": {"w": torch.full((3,), 2.0)}, "hyper_parameters": {}}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.full((3,), 2.0))
