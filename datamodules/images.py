"""CIFAR-10/100 (torchvision's download and on-disk format) and any folder-per-class image set.

Transforms (torchvision ``transforms.v2``):

* ``cifar``: training pad-4 random crop + horizontal flip; per-channel normalization;
* ``imagenet``: training RandomResizedCrop + flip; evaluation resize to 8/7 of ``image_size``
  and center crop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from .base import ClassificationDataModule

__all__ = ["CIFARDataModule", "ImageFolderDataModule"]

# per-channel statistics of the CIFAR training sets
_CIFAR_STATS = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def build_transforms(
    recipe: Literal["cifar", "imagenet"], image_size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms: PIL image -> normalized ``(3, image_size, image_size)`` float tensor."""
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if recipe == "cifar":
        train = [v2.RandomCrop(image_size, padding=4), v2.RandomHorizontalFlip()]
        evaluate = [v2.Resize(image_size), v2.CenterCrop(image_size)]
    elif recipe == "imagenet":
        train = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        evaluate = [v2.Resize(round(image_size * 8 / 7), antialias=True), v2.CenterCrop(image_size)]
    else:
        raise ValueError(f"transforms must be 'cifar' or 'imagenet', got {recipe!r}")
    return v2.Compose(train + tail), v2.Compose(evaluate + tail)


class CIFARDataModule(ClassificationDataModule):
    """CIFAR-10 or CIFAR-100 through ``torchvision.datasets`` (python-pickle format under ``root``).

    Args:
        num_classes: 10 or 100.
        download: fetch the archive into ``root`` when it is missing.
        **kwargs: :class:`~datamodules.base.ClassificationDataModule` options.
    """

    def __init__(self, root: str = "data", num_classes: Literal[10, 100] = 10, download: bool = False, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        if num_classes not in _CIFAR_STATS:
            raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
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

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train_tf, eval_tf = build_transforms("cifar", 32, *_CIFAR_STATS[self.num_classes])
        cls = self._dataset_class()
        try:
            train = cls(self.root, train=True, transform=train_tf)
        except (RuntimeError, OSError) as error:
            raise FileNotFoundError(
                f"CIFAR-{self.num_classes} was not found (or is corrupted) under root={self.root!r} "
                f"(expected {Path(self.root) / cls.base_folder}). Pass --data.init_args.download true to "
                "download it there, or point --data.init_args.root at the folder that holds it."
            ) from error
        return train, cls(self.root, train=True, transform=eval_tf), cls(self.root, train=False, transform=eval_tf)


def _load_rgb(path: str) -> Image.Image:
    """ImageFolder's loader, with an error that names the unreadable file."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise RuntimeError(f"cannot read image file {path}: {error}. Remove or replace the file.") from error


class ImageFolderDataModule(ClassificationDataModule):
    """Folder-per-class images: ``root/<train_split>/<class>/*.jpg`` and ``root/<test_split>/<class>/...``
    (ImageNet, TinyImageNet, the JPEG copy of CIFAR-10, ...).

    Args:
        train_split, test_split: sub-folders of ``root`` (validation is carved from ``train_split``).
        image_size: side of the square network input.
        transforms: ``cifar`` (pad-crop + flip) or ``imagenet`` (RandomResizedCrop + flip).
        mean, std: per-channel normalization (default: ImageNet's).
        **kwargs: :class:`~datamodules.base.ClassificationDataModule` options.
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
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
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

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        train_tf, eval_tf = build_transforms(self.transforms, self.image_size, self.mean, self.std)
        train_dir, test_dir = self._split_dir(self.train_split), self._split_dir(self.test_split)
        test_classes = self._classes(test_dir)
        if test_classes != self.class_names:
            raise ValueError(
                f"the class folders of {test_dir} ({len(test_classes)}) differ from those of {train_dir} "
                f"({len(self.class_names)}): {sorted(set(test_classes) ^ set(self.class_names))[:10]}"
            )
        train = datasets.ImageFolder(str(train_dir), transform=train_tf, loader=_load_rgb)
        train_eval = datasets.ImageFolder(str(train_dir), transform=eval_tf, loader=_load_rgb)
        return train, train_eval, datasets.ImageFolder(str(test_dir), transform=eval_tf, loader=_load_rgb)
