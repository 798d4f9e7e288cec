"""LightningDataModules: ImageNet-style folders, CIFAR, and the embedded Fashion-MNIST default."""

from datamodules.base import ClassificationDataModule, DataError
from datamodules.cifar import CIFARData
from datamodules.fashion_mnist import FashionMNISTData
from datamodules.image_folder import ImageFolderData

__all__ = ["CIFARData", "ClassificationDataModule", "DataError", "FashionMNISTData", "ImageFolderData"]
