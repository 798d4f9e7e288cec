"""LightningDataModules: ImageNet-style folders, CIFAR, the embedded Fashion-MNIST default, and files to classify."""

from datamodules.base import ClassificationDataModule, DataError
from datamodules.cifar import CIFARData
from datamodules.exported import FilesToClassify
from datamodules.fashion_mnist import FashionMNISTData
from datamodules.image_folder import ImageFolderData

__all__ = [
    "CIFARData",
    "ClassificationDataModule",
    "DataError",
    "FashionMNISTData",
    "FilesToClassify",
    "ImageFolderData",
]
