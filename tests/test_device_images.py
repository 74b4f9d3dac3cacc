"""The device-resident image pipeline (``on_device: true``): same augmentation distribution and
normalization as the decoded pipeline, exact resume, DDP shards, the uint8 cache, named errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from distributed import run_distributed, set_launcher_env
from PIL import Image
from test_image_data import _write_image_folder, cifar_root  # noqa: F401  (fixture)
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2

from datamodules import CIFARDataModule, DeviceImages, ImageFolderDataModule
from datamodules.device_images import IndexBatch, crop_flip_params
from datamodules.images import build_transforms

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _random_images(n: int = 6, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_crop_offsets_and_flips_cover_every_case_uniformly():
    indices = torch.arange(81_000)
    top, left, flip = crop_flip_params(indices, epoch=3, seed=7, padding=4)
    counts = torch.bincount((top * 9 + left) * 2 + flip.long(), minlength=162).double()
    assert (counts > 0).all(), "some (top, left, flip) never drawn"
    expected = len(indices) / 162
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 230, f"chi-square {chi2:.1f} over 161 degrees of freedom: not uniform"  # p ~ 3e-4
    # a pure function of (seed, epoch, index); another epoch or seed draws anew
    again = crop_flip_params(indices.flip(0), epoch=3, seed=7, padding=4)
    assert torch.equal(again[0].flip(0), top) and torch.equal(again[2].flip(0), flip)
    other = crop_flip_params(indices, epoch=4, seed=7, padding=4)
    assert (other[0] != top).float().mean() > 0.8


def test_every_crop_and_flip_equals_torchvision_on_the_image():
    """For each of the 162 (top, left, flip) cases, the gathered crop equals torchvision's pad + crop
    + flip of the same image, and the normalization equals ToDtype(scale) + Normalize."""
    images = _random_images(1)
    data = DeviceImages(images, torch.zeros(1), MEAN, STD)
    padded = v2.functional.pad(images[0], [4])
    reference_tail = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    for top, left, flip in itertools.product(range(9), range(9), (False, True)):
        crop, inside = data._crop_flip(
            torch.tensor([0]), torch.tensor([top]), torch.tensor([left]), torch.tensor([flip]), 4, "constant"
        )
        crop = crop * inside
        expected = padded[:, top : top + 8, left : left + 8]
        expected = expected.flip(-1) if flip else expected
        assert torch.equal(crop[0], expected), (top, left, flip)
    x, _ = data.batch(torch.tensor([0]))
    torch.testing.assert_close(x[0], reference_tail(images[0]), rtol=0, atol=1e-6)


PADDINGS = [
    ("constant", "black"),
    ("constant", "mean"),
    ("edge", "black"),
    ("reflect", "black"),
    ("symmetric", "black"),
]


def _padded_candidates(image: torch.Tensor, mode: str, fill: str, padding: int = 4) -> torch.Tensor:
    """Every (top, left, flip) crop of torchvision's padding of a uint8 ``(C, H, W)`` image, normalized:
    ``(2 * (2 * padding + 1) ** 2, C, H, W)`` ordered by (top, left, flip). ``mean`` pads the normalized
    image with 0; every other case pads the uint8 image (black: with 0) and normalizes after."""
    normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    height, width = image.shape[-2:]
    padded = (
        v2.functional.pad(normalize(image), [padding], fill=0)
        if fill == "mean"
        else normalize(v2.functional.pad(image, [padding], fill=0, padding_mode=mode))
    )
    crops = []
    for top, left, flip in itertools.product(range(2 * padding + 1), range(2 * padding + 1), (False, True)):
        crop = padded[:, top : top + height, left : left + width]
        crops.append(crop.flip(-1) if flip else crop)
    return torch.stack(crops)


@pytest.mark.parametrize("mode, fill", PADDINGS)
def test_device_crops_equal_torchvision_for_every_padding_mode(mode, fill):
    """``batch`` of 400 copies of one image: each sample equals torchvision's padding (``pad`` with the
    mode; black before or mean colour after normalizing) cropped and flipped at its drawn offsets."""
    image = _random_images(1)
    indices = torch.arange(400)
    data = DeviceImages(image.expand(400, -1, -1, -1).contiguous(), torch.zeros(400), MEAN, STD)
    x, _ = data.batch(indices, augment=True, epoch=1, seed=3, padding=4, padding_mode=mode, pad_fill=fill)
    top, left, flip = crop_flip_params(indices, epoch=1, seed=3, padding=4)
    candidates = _padded_candidates(image[0], mode, fill)
    expected = candidates[(top * 9 + left) * 2 + flip.long()]
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    border = x[(top == 0) & (left == 0) & ~flip][:, :, 0, 0]  # the top-left corner pixel is padding
    if fill == "mean":
        assert border.abs().max() == 0
    elif mode == "constant":
        torch.testing.assert_close(
            border, -(torch.tensor(MEAN) / torch.tensor(STD)).expand_as(border), rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("mode, fill", PADDINGS)
def test_decoded_crops_are_torchvision_paddings_of_the_image(mode, fill):
    """The decoded pipeline's training transform gives, on every draw, one of the padded crops above."""
    image = _random_images(1)
    train, _ = build_transforms("cifar", 8, MEAN, STD, padding=4, padding_mode=mode, pad_fill=fill)
    candidates = _padded_candidates(image[0], mode, fill)
    torch.manual_seed(0)
    drawn = set()
    for _ in range(40):
        x = train(Image.fromarray(image[0].permute(1, 2, 0).numpy()))
        match = ((candidates - x).abs().amax(dim=(1, 2, 3)) <= 1e-6).nonzero()
        assert len(match) > 0, "not a padded crop of the image"
        drawn.add(int(match[0]))
    assert len(drawn) > 20  # random offsets and flips, not one fixed crop


def test_padding_options_are_checked():
    with pytest.raises(ValueError, match="padding_mode 'wrap': choose one of constant, edge, reflect, symmetric"):
        build_transforms("cifar", 8, MEAN, STD, padding_mode="wrap")
    with pytest.raises(ValueError, match="pad_fill mean fills constant padding; padding_mode reflect"):
        build_transforms("cifar", 8, MEAN, STD, padding_mode="reflect", pad_fill="mean")
    with pytest.raises(ValueError, match="padding 8 with padding_mode reflect needs images larger than it"):
        build_transforms("cifar", 8, MEAN, STD, padding=8, padding_mode="reflect")
    with pytest.raises(ValueError, match="the imagenet recipe has none"):
        build_transforms("imagenet", 8, MEAN, STD, pad_fill="mean")


def test_evaluation_batches_equal_the_decoded_pipelines(tmp_path):
    root = _write_image_folder(tmp_path / "data", per_class=(8, 3))
    options = {
        "root": str(root),
        "train_split": "train",
        "test_split": "test",
        "image_size": 40,
        "transforms": "cifar",
        "mean": MEAN,
        "std": STD,
        "batch_size": 4,
    }
    decoded, device = ImageFolderDataModule(**options), ImageFolderDataModule(on_device=True, **options)
    for dm in (decoded, device):
        dm.prepare_data()
        dm.setup("fit")
    for name in ("val_dataloader", "test_dataloader"):
        ref = [b for b in getattr(decoded, name)()]
        got = [device.on_after_batch_transfer(b, 0) for b in getattr(device, name)()]
        assert len(got) == len(ref)
        for (x1, y1), (x2, y2) in zip(ref, got):
            torch.testing.assert_close(x2, x1, rtol=0, atol=1e-6)
            assert torch.equal(y1, y2)
    assert len(list((root / ".l2bn_cache").glob("*.npy"))) == 2


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path):
    root = _write_image_folder(tmp_path / "data", per_class=(2, 1))
    dm = ImageFolderDataModule(
        str(root),
        test_split="test",
        image_size=40,
        transforms="cifar",
        on_device=True,
        batch_size=2,
        mean=MEAN,
        std=STD,
    )
    dm.prepare_data()
    first = sorted((root / ".l2bn_cache").glob("*.npy"))
    dm.prepare_data()
    assert sorted((root / ".l2bn_cache").glob("*.npy")) == first
    changed = next((root / "train").rglob("*.jpg"))
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(changed)
    dm.prepare_data()
    assert len(list((root / ".l2bn_cache").glob("*.npy"))) == 3
    dm.setup("fit")
    x, _ = dm.device_images["train"].batch(torch.arange(len(dm.device_images["train"])))
    red = torch.tensor((200 / 255 - MEAN[0]) / STD[0])
    assert torch.isclose(x[:, 0], red, atol=0.02).flatten(1).all(1).any(), "the changed image was not decoded anew"


def test_errors_name_the_file_and_the_option(tmp_path):
    root = _write_image_folder(tmp_path / "data", per_class=(2, 1))
    with pytest.raises(ValueError, match="on_device supports transforms: cifar"):
        ImageFolderDataModule(str(root), test_split="test", transforms="imagenet", on_device=True)
    dm = ImageFolderDataModule(str(root), test_split="test", image_size=32, transforms="cifar", on_device=True)
    with pytest.raises(ValueError, match=r"0000\.jpg is 40x40, not 32x32.*on_device: false"):
        dm.prepare_data()


def test_cifar_on_device_holds_torchvisions_arrays(cifar_root):  # noqa: F811
    dm = CIFARDataModule(str(cifar_root), on_device=True, batch_size=4, val_fraction=0.25)
    dm.setup("fit")
    train = dm.device_images["train"]
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    decoded = CIFARDataModule(str(cifar_root), batch_size=4, val_fraction=0.25)
    decoded.setup("fit")
    x1, y1 = next(iter(decoded.val_dataloader()))
    x2, y2 = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    torch.testing.assert_close(x2, x1, rtol=0, atol=1e-6)
    assert torch.equal(y1, y2)


class _RecordBatches(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[int, np.ndarray]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch[0].numpy().copy()))


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 40 * 40, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _train(root: Path, tmp_path: Path, epochs: int, ckpt: str | None = None) -> tuple[list, pl.Trainer]:
    pl.seed_everything(3)
    record = _RecordBatches()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[record],
    )
    dm = ImageFolderDataModule(
        str(root), test_split="test", image_size=40, transforms="cifar", on_device=True, batch_size=4
    )
    trainer.fit(_Tiny(), datamodule=dm, ckpt_path=ckpt)
    return record.batches, trainer


def test_resumed_run_sees_the_same_augmented_batches(tmp_path):
    root = _write_image_folder(tmp_path / "data", per_class=(8, 3))
    whole, _ = _train(root, tmp_path / "whole", epochs=3)
    first, trainer = _train(root, tmp_path / "first", epochs=1)
    resumed, _ = _train(
        root,
        tmp_path / "resumed",
        epochs=3,
        ckpt=trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path,
    )
    assert len(first) + len(resumed) == len(whole)
    for (e1, x1), (e2, x2) in zip(first + resumed, whole):
        assert e1 == e2
        np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(whole[0][1], whole[len(first)][1])  # the epochs differ


def test_ddp_shards_are_disjoint_and_complete(tmp_path):
    """Lightning gives each rank a DistributedSampler over the index dataset; the device batches of
    two ranks together cover the training split once."""
    root = _write_image_folder(tmp_path / "data", per_class=(8, 3))
    dm = ImageFolderDataModule(
        str(root), test_split="test", image_size=40, transforms="cifar", on_device=True, batch_size=5
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        for chunk in torch.utils.data.DataLoader(
            loader.dataset, batch_size=5, sampler=sampler, collate_fn=loader.collate_fn
        ):
            assert isinstance(chunk, IndexBatch) and chunk.split == "train"
            seen.append(chunk.indices)
    seen = torch.cat(seen).sort().values
    assert torch.equal(seen, torch.tensor(sorted(loader.dataset.indices)))


class _TinyRecording(_Tiny):
    """Keeps the sample indices of each training batch as the DataLoader delivered them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if isinstance(batch, IndexBatch) and batch.split == "train":
            self.seen += batch.indices.tolist()
        return batch


def _ddp_rank(rank: int, world_size: int, root: str) -> np.ndarray:
    """One rank of a Lightning DDP fit (launched outside Lightning, as torchrun would) on the on_device
    pipeline; returns the training indices this rank saw in its one epoch."""
    set_launcher_env(rank, world_size)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy="ddp",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    # 22 training images: 11 per rank, one batch of 11 each (nothing dropped)
    dm = ImageFolderDataModule(
        root, test_split="test", image_size=40, transforms="cifar", on_device=True, batch_size=11
    )
    model = _TinyRecording()
    trainer.fit(model, datamodule=dm)
    return np.array(model.seen)


def test_lightning_ddp_ranks_train_on_disjoint_shards_that_cover_the_split(tmp_path):
    root = _write_image_folder(tmp_path / "data", per_class=(8, 3))
    shards = run_distributed(_ddp_rank, 2, str(root), timeout=240)
    dm = ImageFolderDataModule(str(root), test_split="test", image_size=40, transforms="cifar", on_device=True)
    dm.setup("fit")
    train = sorted(dm.train_set.indices)
    seen = [set(shard.tolist()) for shard in shards]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert sorted(seen[0] | seen[1]) == train
