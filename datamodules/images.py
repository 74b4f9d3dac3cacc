"""CIFAR-10/100 (torchvision's download and on-disk format) and any folder-per-class image set.

Transforms (torchvision ``transforms.v2``):

* ``cifar``: training pad-4 random crop + horizontal flip; per-channel normalization;
* ``imagenet``: training RandomResizedCrop + flip; evaluation resize to 8/7 of ``image_size``
  and center crop.

``on_device: true`` (``cifar`` transforms only) replaces the per-sample CPU pipeline by the
device-resident one of :mod:`datamodules.device_images`: uint8 images on the training device,
augmented there per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from .base import ClassificationDataModule
from .device_images import DeviceImages, IndexBatch, IndexDataset, PaddingMode, PadFill, check_padding, image_cache

__all__ = ["CIFARDataModule", "ImageFolderDataModule"]

# per-channel statistics of the CIFAR training sets
_CIFAR_STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def build_transforms(
    recipe: Literal["cifar", "imagenet"],
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    padding: int = 4,
    padding_mode: PaddingMode = "constant",
    pad_fill: PadFill = "black",
) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms: PIL image -> normalized ``(3, image_size, image_size)`` float tensor.
    The ``cifar`` recipe's random crop pads by ``padding`` with ``padding_mode``; constant padding is
    black before normalizing, or with ``pad_fill: mean`` zero after it (the crop then follows
    ``Normalize``; :func:`~datamodules.device_images.check_padding`)."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if recipe == "cifar":
        check_padding(padding, padding_mode, pad_fill, image_size)
        train = [v2.RandomCrop(image_size, padding=padding, padding_mode=padding_mode), v2.RandomHorizontalFlip()]
        evaluate = [v2.Resize(image_size), v2.CenterCrop(image_size)]
        if pad_fill == "mean":  # crop the normalized image: its zero padding is the mean colour
            return v2.Compose(tail + train), v2.Compose(evaluate + tail)
    elif recipe == "imagenet":
        if (padding_mode, pad_fill) != ("constant", "black"):
            raise ValueError(
                "padding_mode and pad_fill set the cifar recipe's random crop; the imagenet recipe has none"
            )
        train = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        evaluate = [v2.Resize(round(image_size * 8 / 7), antialias=True), v2.CenterCrop(image_size)]
    else:
        raise ValueError(f"transforms must be 'cifar' or 'imagenet', got {recipe!r}")
    return v2.Compose(train + tail), v2.Compose(evaluate + tail)


class ImageDataModule(ClassificationDataModule):
    """Shared image-datamodule logic: the decoded (PIL, per-sample) pipeline, or the device-resident one.

    Args:
        on_device: hold the uint8 images on the training device and crop, flip and normalize there
            per batch (:mod:`datamodules.device_images`); the DataLoader then carries only indices
            (no workers). For small fixed-size images (CIFAR, TinyImageNet) with ``cifar`` transforms.
        padding: the ``cifar`` recipe's random-crop padding in pixels (4).
        padding_mode: how the crop pads: torchvision's ``constant`` (default), ``edge``, ``reflect``,
            ``symmetric``.
        pad_fill: what ``constant`` padding is: ``black`` (default; uint8 0 before normalizing, as
            torchvision's ``RandomCrop(padding=4)`` before ``Normalize``: about -2 per channel after)
            or ``mean`` (the mean colour: 0 after normalizing). Both pipelines, decoded and on device.
        crop_per_batch: device mode: one crop offset per batch instead of one per sample (flips stay
            per sample), as some minimal GPU training scripts crop; an ablation switch, off by default.
        **kwargs: :class:`~datamodules.base.ClassificationDataModule` options.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self,
        root: str,
        on_device: bool = False,
        padding: int = 4,
        crop_per_batch: bool = False,
        padding_mode: PaddingMode = "constant",
        pad_fill: PadFill = "black",
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if crop_per_batch and not on_device:
            raise ValueError("crop_per_batch is a device-mode option: set on_device: true as well")
        self.on_device = on_device
        check_padding(padding, padding_mode, pad_fill)
        self.padding, self.padding_mode, self.pad_fill = padding, padding_mode, pad_fill
        self.crop_per_batch = crop_per_batch
        self.device_images: dict[str, DeviceImages] = {}

    @property
    def padding_options(self) -> tuple[int, PaddingMode, PadFill]:
        """``(padding, padding_mode, pad_fill)`` of the random crop."""
        return self.padding, self.padding_mode, self.pad_fill

    def load_uint8(self) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """``((train images, train labels), (test images, test labels))``: uint8 ``(N, 3, H, W)``
        arrays and class indices, for the device-resident pipeline."""
        raise NotImplementedError(f"{type(self).__name__} has no device-resident pipeline")

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """The decoded datasets, or in device mode the index datasets over the uint8 arrays (the base
        class carves the same seeded validation split out of either)."""
        if not self.on_device:
            return self.decoded_datasets()
        (train_x, train_y), (test_x, test_y) = self.load_uint8()
        check_padding(*self.padding_options, size=min(train_x.shape[-2:]))
        train = DeviceImages(torch.as_tensor(train_x), torch.as_tensor(train_y), self.mean, self.std)
        test = DeviceImages(torch.as_tensor(test_x), torch.as_tensor(test_y), self.mean, self.std)
        self.device_images = {"train": train, "train_eval": train, "test": test}
        return (
            IndexDataset(len(train), "train"),
            IndexDataset(len(train), "train_eval"),
            IndexDataset(len(test), "test"),
        )

    def decoded_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """``(train, train_with_eval_transforms, test)`` of decoded, per-sample transformed images."""
        raise NotImplementedError

    def _loader(self, dataset: Dataset | None, shuffle: bool, **overrides) -> DataLoader:
        if self.on_device:
            indices = dataset.dataset if isinstance(dataset, Subset) else dataset
            overrides = {"collate_fn": indices.collate, "num_workers": 0, "pin_memory": False, **overrides}
        return super()._loader(dataset, shuffle, **overrides)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Device mode: gathers (and, for training, augments) the batch's images on its device."""
        if not isinstance(batch, IndexBatch):
            return batch
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        images = self.device_images[batch.split]
        return images.batch(
            batch.indices,
            augment=batch.split == "train",
            epoch=epoch,
            seed=self._training_seed(),  # the augmentation key: the training order's seed (a resumed run's too)
            padding=self.padding,
            crop_per_batch=self.crop_per_batch,
            padding_mode=self.padding_mode,
            pad_fill=self.pad_fill,
        )


class CIFARDataModule(ImageDataModule):
    """CIFAR-10 or CIFAR-100 through ``torchvision.datasets`` (python-pickle format under ``root``).

    Args:
        num_classes: 10 or 100.
        download: fetch the archive into ``root`` when it is missing.
        **kwargs: :class:`~datamodules.base.ClassificationDataModule` options.
    """

    def __init__(
        self, root: str = "data", num_classes: Literal[10, 100] = 10, download: bool = False, **kwargs
    ) -> None:
        super().__init__(root=root, **kwargs)
        if num_classes not in _CIFAR_STATS:
            raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
        self.mean, self.std = _CIFAR_STATS[num_classes]
        self.num_classes = num_classes
        self.download = download
        self.input_shape = [3, 32, 32]
        self.class_names = [str(i) for i in range(num_classes)]

    def _dataset_class(self) -> type[datasets.CIFAR10]:
        return datasets.CIFAR10 if self.num_classes == 10 else datasets.CIFAR100

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                self._dataset_class()(self.root, train=train, download=True)

    def _open(self, train: bool, transform: Callable | None = None) -> datasets.CIFAR10:
        cls = self._dataset_class()
        try:
            return cls(self.root, train=train, transform=transform)
        except (RuntimeError, OSError) as error:
            raise FileNotFoundError(
                f"CIFAR-{self.num_classes} was not found (or is corrupted) under root={self.root!r} "
                f"(expected {Path(self.root) / cls.base_folder}). Pass --data.init_args.download true to "
                "download it there, or point --data.init_args.root at the folder that holds it."
            ) from error

    def decoded_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train_tf, eval_tf = build_transforms("cifar", 32, self.mean, self.std, *self.padding_options)
        return self._open(True, train_tf), self._open(True, eval_tf), self._open(False, eval_tf)

    @property
    def padding_options(self) -> tuple[int, PaddingMode, PadFill]:
        """``(padding, padding_mode, pad_fill)`` of the random crop."""
        return self.padding, self.padding_mode, self.pad_fill

    def load_uint8(self) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        """torchvision's arrays as they are stored: uint8 ``(N, 32, 32, 3)``, as ``(N, 3, 32, 32)``."""
        train, test = self._open(True), self._open(False)
        return (
            (train.data.transpose(0, 3, 1, 2).copy(), train.targets),
            (test.data.transpose(0, 3, 1, 2).copy(), test.targets),
        )


def _load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader, with an error that names the unreadable file."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise RuntimeError(f"cannot read image file {path}: {error}. Remove or replace the file.") from error


class ImageFolderDataModule(ImageDataModule):
    """Folder-per-class images: ``root/<train_split>/<class>/*.jpg`` and ``root/<test_split>/<class>/...``
    (ImageNet, TinyImageNet, the JPEG copy of CIFAR-10, ...).

    Args:
        train_split, test_split: sub-folders of ``root`` (validation is carved from ``train_split``).
        image_size: side of the square network input.
        transforms: ``cifar`` (pad-crop + flip) or ``imagenet`` (RandomResizedCrop + flip).
        mean, std: per-channel normalization (default: ImageNet's).
        cache_dir: where ``on_device`` keeps its decoded uint8 ``.npy`` files (default: ``root``).
        **kwargs: :class:`ImageDataModule` options (``on_device``, ...) and
            :class:`~datamodules.base.ClassificationDataModule` options.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        test_split: str = "val",
        image_size: int = 224,
        transforms: Literal["cifar", "imagenet"] = "imagenet",
        mean: tuple[float, float, float] = _IMAGENET_STATS[0],
        std: tuple[float, float, float] = _IMAGENET_STATS[1],
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if self.on_device and transforms != "cifar":
            raise ValueError(
                f"on_device supports transforms: cifar (pad-crop + flip), not {transforms!r}: set transforms: cifar "
                "or on_device: false"
            )
        self.cache_dir = cache_dir
        self.train_split, self.test_split = train_split, test_split
        self.image_size, self.transforms = image_size, transforms
        self.mean, self.std = tuple(mean), tuple(std)
        self.class_names = self._classes(self._split_dir(train_split))
        self.num_classes = len(self.class_names)
        self.input_shape = [3, image_size, image_size]

    def _split_dir(self, split: str) -> Path:
        folder = Path(self.root) / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"image folder {folder} does not exist: expected the layout {Path(self.root)}/{split}/<class>/<image> "
                f"(set --data.init_args.root, or train_split/test_split to the sub-folder names)"
            )
        return folder

    @staticmethod
    def _classes(folder: Path) -> list[str]:
        classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
        if not classes:
            raise FileNotFoundError(f"image folder {folder} holds no class sub-folders (<class>/<image>)")
        return classes

    def _check_test_classes(self) -> tuple[Path, Path]:
        """The train and test folders, after checking that they hold the same class folders."""
        train_dir, test_dir = self._split_dir(self.train_split), self._split_dir(self.test_split)
        test_classes = self._classes(test_dir)
        if test_classes != self.class_names:
            raise ValueError(
                f"the class folders of {test_dir} ({len(test_classes)}) differ from those of {train_dir} "
                f"({len(self.class_names)}): {sorted(set(test_classes) ^ set(self.class_names))[:10]}"
            )
        return train_dir, test_dir

    def decoded_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train_tf, eval_tf = build_transforms(
            self.transforms, self.image_size, self.mean, self.std, *self.padding_options
        )
        train_dir, test_dir = self._check_test_classes()
        train = datasets.ImageFolder(str(train_dir), transform=train_tf, loader=_load_rgb)
        train_eval = datasets.ImageFolder(str(train_dir), transform=eval_tf, loader=_load_rgb)
        return train, train_eval, datasets.ImageFolder(str(test_dir), transform=eval_tf, loader=_load_rgb)

    def _folder_dataset(self, split: str) -> datasets.ImageFolder:
        return datasets.ImageFolder(str(self._split_dir(split)), loader=_load_rgb)

    def prepare_data(self) -> None:
        if self.on_device:  # decode once, on one process per node
            for split in (self.train_split, self.test_split):
                self._cached_uint8(split)

    def _cached_uint8(self, split: str) -> tuple[Any, list[int]]:
        folder = self._folder_dataset(split)
        root = Path(self.root)
        files = [str(Path(path).relative_to(root)) for path, _ in folder.samples]
        path = image_cache(
            Path(self.cache_dir or self.root) / ".l2bn_cache", split, root, files, self.image_size, _load_rgb
        )
        return np.load(path), list(folder.targets)

    @property
    def padding_options(self) -> tuple[int, PaddingMode, PadFill]:
        """``(padding, padding_mode, pad_fill)`` of the random crop."""
        return self.padding, self.padding_mode, self.pad_fill

    def load_uint8(self) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        self._check_test_classes()
        return self._cached_uint8(self.train_split), self._cached_uint8(self.test_split)
