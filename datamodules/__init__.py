"""LightningDataModules: a seeded validation split from the training set, the test split for test only."""

from .base import ClassificationDataModule, EpochShuffleSampler
from .dcase import AudioClipDataset, TAUScenesDataModule
from .device_images import DeviceImages
from .digits import DigitsDataModule
from .images import CIFARDataModule, ImageDataModule, ImageFolderDataModule
from .tau_layout import read_file_list, write_synthetic_tau

__all__ = [
    "AudioClipDataset",
    "CIFARDataModule",
    "ClassificationDataModule",
    "DeviceImages",
    "DigitsDataModule",
    "EpochShuffleSampler",
    "ImageDataModule",
    "ImageFolderDataModule",
    "TAUScenesDataModule",
    "read_file_list",
    "write_synthetic_tau",
]
