"""LightningDataModules: a seeded validation split from the training set, the test split for test only."""

from .base import ClassificationDataModule, EpochShuffleSampler
from .digits import DigitsDataModule
from .images import CIFARDataModule, ImageFolderDataModule

__all__ = ["CIFARDataModule", "ClassificationDataModule", "DigitsDataModule", "EpochShuffleSampler", "ImageFolderDataModule"]
