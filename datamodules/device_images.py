"""A device-resident image pipeline for small-image data sets (CIFAR, TinyImageNet, JPEG copies).

The whole split is held as uint8 ``(N, C, H, W)`` (CIFAR-10's training set: 150 MB) on the training
device. The DataLoader yields only sample indices (:class:`IndexBatch`), so Lightning's samplers
keep deciding the order, the DDP shards and the resume position exactly as for the decoded
pipeline; after the indices reach the device, :meth:`DeviceImages.batch` gathers the images and
augments them there, a whole batch at a time:

* random crop and horizontal flip (torchvision's ``RandomCrop(size, padding, padding_mode=...)`` +
  ``RandomHorizontalFlip()``; the same distribution, drawn per sample), constant padding filled with
  black before normalizing (torchvision's default) or with the mean colour (zero after normalizing);
* conversion to float and per-channel normalization (``ToDtype(scale=True)`` + ``Normalize``).

The crop offsets and flips are a counter-based hash of ``(seed, epoch, sample index)``
(:func:`crop_flip_params`), not a stateful generator: a sample gets the same augmentation in a
given epoch whichever batch, process or resumed run draws it, on any device.

Folder-per-class sets are decoded once, in parallel, into a uint8 ``.npy`` cache beside the data,
named by a hash of every file's name, size and modification time (as the audio feature cache).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .cache_files import keyed_cache_path

__all__ = [
    "PADDING_MODES",
    "PAD_FILLS",
    "DeviceImages",
    "IndexBatch",
    "IndexDataset",
    "check_padding",
    "crop_flip_params",
    "decode_images",
    "image_cache",
]

#: torchvision's padding modes for the random crop, and what constant padding is filled with
PaddingMode = Literal["constant", "edge", "reflect", "symmetric"]
PadFill = Literal["black", "mean"]
PADDING_MODES: tuple[str, ...] = get_args(PaddingMode)
PAD_FILLS: tuple[str, ...] = get_args(PadFill)

log = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF


class IndexBatch(NamedTuple):
    """What the DataLoader yields in device mode: ``indices`` ``(B,)`` int64 into the images of
    ``split`` (``train``: augmented; ``train_eval``: the validation share of the training images;
    ``test``). Lightning moves the tensor field to the device; the string stays."""

    indices: Tensor
    split: str


class IndexDataset(Dataset):
    """``range(size)`` as a map-style dataset whose batches collate into :class:`IndexBatch`."""

    def __init__(self, size: int, split: str) -> None:
        self.size, self.split = size, split

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> IndexBatch:
        return IndexBatch(torch.tensor(indices, dtype=torch.int64), self.split)


def _hash32(h: Tensor) -> Tensor:
    """lowbias32 integer hash of int64 tensors holding 32-bit values (wrap-around arithmetic)."""
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _MASK32
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _MASK32
    return h ^ (h >> 16)


def crop_flip_params(indices: Tensor, epoch: int, seed: int, padding: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample ``(top, left, flip)`` for a pad-``padding`` random crop and a horizontal flip:
    ``top`` and ``left`` uniform in ``0 .. 2 * padding``, ``flip`` a fair coin, all ``(B,)``, on
    ``indices``' device, a pure function of ``(seed, epoch, index)``."""
    key = _hash32(torch.tensor([seed & _MASK32, (seed >> 32) & _MASK32, epoch], device=indices.device))
    h = _hash32(_hash32(indices ^ key[0]) ^ key[1] ^ (key[2] << 1))
    span = 2 * padding + 1
    return h % span, (h // span) % span, (h // (span * span)) % 2 == 1


class DeviceImages:
    """A split's uint8 images and labels, copied to a device on first use.

    Args:
        images: ``(N, C, H, W)`` uint8.
        labels: ``(N,)`` class indices.
        mean, std: per-channel normalization of the ``[0, 1]`` images.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.to(torch.int64)
        std_t = torch.tensor(std, dtype=torch.float32)
        # x = (u8 / 255 - mean) / std = u8 * scale - shift
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1)
        self._device: torch.device = images.device

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device) -> DeviceImages:
        """Moves the arrays (once) to ``device``."""
        if self._device != device:
            for name in ("images", "labels", "scale", "shift"):
                setattr(self, name, getattr(self, name).to(device))
            self._device = device
        return self

    def batch(
        self,
        indices: Tensor,
        augment: bool = False,
        epoch: int = 0,
        seed: int = 0,
        padding: int = 4,
        crop_per_batch: bool = False,
        padding_mode: PaddingMode = "constant",
        pad_fill: PadFill = "black",
    ) -> tuple[Tensor, Tensor]:
        """``(images float32 (B, C, H, W), labels (B,))`` for ``indices`` (on this object's device),
        randomly cropped (``padding``, ``padding_mode``, ``pad_fill``: see :func:`check_padding`) and
        flipped when ``augment``; ``crop_per_batch``: every sample takes the first one's crop offset
        (flips stay per sample)."""
        self.to(indices.device)
        if not augment:
            return torch.addcmul(-self.shift, self.images[indices].float(), self.scale), self.labels[indices]
        top, left, flip = crop_flip_params(indices, epoch, seed, padding)
        if crop_per_batch:
            top, left = top[:1].expand_as(top), left[:1].expand_as(left)
        images, inside = self._crop_flip(indices, top, left, flip, padding, padding_mode)
        if inside is not None and pad_fill == "black":  # black uint8 border, normalized with the image
            images = images * inside.to(images.dtype)
        images = torch.addcmul(-self.shift, images.float(), self.scale)
        if inside is not None and pad_fill == "mean":  # a zero border after normalizing: the mean colour
            images = images * inside
        return images, self.labels[indices]

    def _crop_flip(
        self, indices: Tensor, top: Tensor, left: Tensor, flip: Tensor, padding: int, padding_mode: PaddingMode
    ) -> tuple[Tensor, Tensor | None]:
        """One gather: output pixel ``(i, j)`` of sample ``b`` is padded-image pixel
        ``(top + i, left + j')`` (``j' = W - 1 - j`` when flipped). Returns the uint8 ``(B, C, H, W)``
        and, for ``constant`` padding, the ``(B, 1, H, W)`` mask of pixels inside the image (the
        border still to be filled); other modes read the border from the image itself."""
        _, channels, height, width = self.images.shape
        device = indices.device
        rows, row_inside = _source_index(
            top[:, None] + torch.arange(height, device=device) - padding, height, padding_mode
        )
        cols = left[:, None] + torch.arange(width, device=device) - padding  # (B, W)
        cols, col_inside = _source_index(torch.where(flip[:, None], cols.flip(1), cols), width, padding_mode)
        gathered = self.images[
            indices[:, None, None, None],
            torch.arange(channels, device=device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]  # (B, C, H, W)
        inside = None if row_inside is None else (row_inside[:, :, None] & col_inside[:, None, :])[:, None]
        return gathered, inside


def _source_index(index: Tensor, size: int, mode: PaddingMode) -> tuple[Tensor, Tensor | None]:
    """Positions ``index`` of a padded axis (``-padding .. size + padding - 1``) -> the image position
    each reads, as torch's padding modes do, and for ``constant`` the mask of positions inside."""
    if mode == "constant":
        return index.clamp(0, size - 1), (index >= 0) & (index < size)
    if mode == "edge":
        return index.clamp(0, size - 1), None
    if mode == "reflect":  # ... 2 1 | 0 1 2 ... (the edge not repeated)
        return torch.where(index < 0, -index, torch.where(index >= size, 2 * (size - 1) - index, index)), None
    if mode == "symmetric":  # ... 1 0 | 0 1 ... (the edge repeated)
        return torch.where(index < 0, -index - 1, torch.where(index >= size, 2 * size - 1 - index, index)), None
    raise ValueError(f"padding_mode {mode!r}: choose one of {', '.join(PADDING_MODES)}")


def check_padding(padding: int, padding_mode: str, pad_fill: str, size: int | None = None) -> None:
    """The random crop's padding options, checked: ``padding_mode`` is torchvision's (``constant``,
    ``edge``, ``reflect``, ``symmetric``); ``pad_fill`` is what ``constant`` fills with: ``black``
    (uint8 0 before normalizing, torchvision's ``RandomCrop(padding=...)`` before ``Normalize``: the
    border becomes ``-mean / std``) or ``mean`` (0 after normalizing: the data set's mean colour).
    ``reflect`` and ``symmetric`` need ``padding`` below the image ``size`` (checked when given)."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode {padding_mode!r}: choose one of {', '.join(PADDING_MODES)}")
    if pad_fill not in PAD_FILLS:
        raise ValueError(f"pad_fill {pad_fill!r}: choose one of {', '.join(PAD_FILLS)}")
    if pad_fill != "black" and padding_mode != "constant":
        raise ValueError(
            f"pad_fill {pad_fill} fills constant padding; padding_mode {padding_mode} takes the border "
            "from the image: leave pad_fill at black or set padding_mode constant"
        )
    if size is not None and padding_mode in ("reflect", "symmetric") and padding >= size:
        raise ValueError(
            f"padding {padding} with padding_mode {padding_mode} needs images larger than it ({size} pixels)"
        )


def _read_rgb(path: str, size: int, load: Callable[[str], Image.Image]) -> np.ndarray:
    image = load(path)
    if image.size != (size, size):
        raise ValueError(
            f"image {path} is {image.size[0]}x{image.size[1]}, not {size}x{size}: on_device keeps every image as "
            "decoded (crop and flip only), so the data set must be stored at image_size. Set image_size to the "
            "images' size, resize the data set, or use on_device: false"
        )
    return np.asarray(image, dtype=np.uint8)


def decode_images(
    paths: Sequence[str], size: int, load: Callable[[str], Image.Image], workers: int | None = None
) -> np.ndarray:
    """Decodes ``paths`` with ``load`` (path -> RGB PIL image, all ``size`` x ``size``) into uint8
    ``(N, 3, size, size)``, in parallel threads (PIL releases the GIL while it decodes)."""
    workers = workers or min(
        32, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def decode(i: int) -> None:
        out[i] = _read_rgb(paths[i], size, load).transpose(2, 0, 1)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode, range(len(paths)), chunksize=256))
    return out


def image_cache(
    folder: Path, split: str, root: Path, files: list[str], size: int, load: Callable[[str], Image.Image]
) -> Path:
    """The cache file of ``files`` (relative to ``root``); built by decoding them with ``load`` when missing."""
    path = keyed_cache_path(folder, split, {"kind": "uint8 RGB (N, 3, H, W)", "size": size}, root, files)
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.stem + f".partial-{os.getpid()}.npy")
        log.info("decoding %d images of %s into %s", len(files), root / split, path)
        np.save(partial, decode_images([str(root / f) for f in files], size, load))
    except PermissionError as error:
        raise PermissionError(
            f"cannot write the on_device image cache into {path.parent}: set --data.init_args.cache_dir to a "
            "writable folder"
        ) from error
    os.replace(partial, path)
    return path
