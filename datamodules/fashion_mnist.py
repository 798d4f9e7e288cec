"""Fashion-MNIST, the embedded default: the real 70,000 images from IDX files on disk."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from datamodules.base import ClassificationDataModule, DataError
from datamodules.soft_labels import SoftLabelCache
from errors import downloading, require_positive

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's package dataset-fashion-mnist
MEAN, STD = (0.2860,), (0.3530,)
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO_GET = (
    "install Debian's 'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist), "
    "set data.download=true, or point data.data_dir at the IDX files"
)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (raw or .gz) as a numpy array: magic 0x0000 0x08 <ndim>, big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise DataError(
            f"Cannot read '{path}' ({err}): the file is corrupt; delete it and get the data again."
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"'{path}' is not a uint8 IDX file: expected Fashion-MNIST's original files.")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"'{path}' is truncated ({data.size} of {int(np.prod(dims))} values): get the data again.")
    return data.reshape(dims)


def find_idx(folder: Path, stem: str) -> Optional[Path]:
    """``stem`` or ``stem.gz`` directly in ``folder`` or in torchvision's ``FashionMNIST/raw`` below it."""
    for base in (folder, folder / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (base / name).is_file():
                return base / name
    return None


class TensorImages(Dataset):
    """uint8 images [N, 1, H, W] held in memory: ``transform`` per sample (the random crop), then ``finish`` (dtype,
    normalization) once for the whole batch the DataLoader fetches (per image, it costs more than the crop)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform, finish=None):
        self.images, self.labels, self.transform, self.finish = images, labels, transform, finish

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list:
        images = [self.transform(self.images[i]) if self.transform else self.images[i] for i in indices]
        if self.finish is not None:
            images = list(self.finish(torch.stack(images)))
        return [(image, int(self.labels[i])) for image, i in zip(images, indices, strict=True)]


class FashionMNISTData(ClassificationDataModule):
    """Fashion-MNIST: 60,000 training and 10,000 test images, 28x28 grey, 10 classes.

    Looks in ``data_dir``, then in /usr/share/datasets/fashion-mnist (Debian), then downloads with
    torchvision into ``data_dir`` when ``download`` is true. Train: 2-pixel padded random crop +
    horizontal flip; test: the official 10,000 test images, which are also val unless ``val_size``
    training images are held out for it (seeded by ``val_seed``; only then is a "best" epoch selected).
    ``train_subset`` keeps a fixed random subset of the training images (seeded) for short runs; ``in_chans: 3`` replicates the channel;
    ``augment: false`` trains on the plain images (deterministic batches, e.g. for parity checks).
    """

    def __init__(
        self,
        data_dir: str = "data/fashion-mnist",
        download: bool = False,
        in_chans: int = 1,
        train_subset: Optional[int] = None,
        subset_seed: int = 0,
        augment: bool = True,
        val_size: int = 0,
        val_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 0,
        soft_labels: Optional[SoftLabelCache] = None,
        predict_files: Optional[list[str]] = None,
    ):
        super().__init__(batch_size, num_workers, soft_labels, predict_files)
        self._check_val_size(val_size)
        self.val_size, self.val_seed = val_size, val_seed
        if in_chans not in (1, 3):
            raise DataError(f"in_chans must be 1 or 3 for Fashion-MNIST, got {in_chans}.")
        self.data_dir = Path(data_dir)
        self.download = download
        self._in_chans, self._mean, self._std = in_chans, MEAN * in_chans, STD * in_chans
        require_positive(train_subset=train_subset)
        self.train_subset = train_subset
        self.subset_seed = subset_seed
        self.augment = augment

    image_size = 28
    crop_padding = 2

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def class_names(self) -> list[str]:
        return list(CLASSES)

    def locate(self) -> Path:
        """The folder holding the four IDX files, or a one-line error saying how to get them."""
        for folder in (self.data_dir, SYSTEM_DIR):
            if all(find_idx(folder, stem) for pair in FILES.values() for stem in pair):
                return folder
        raise DataError(f"Fashion-MNIST not found in '{self.data_dir}' or '{SYSTEM_DIR}': {HOW_TO_GET}.")

    def prepare_data(self) -> None:
        try:
            self.locate()
        except DataError:
            if not self.download:
                raise
            with downloading(
                "Fashion-MNIST",
                str(self.data_dir),
                f"Without network: {HOW_TO_GET.replace(', set data.download=true', '')}",
            ):
                for train in (True, False):
                    datasets.FashionMNIST(str(self.data_dir), train=train, download=True)

    def _split(self, folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images_stem, labels_stem = FILES[split]
        images = read_idx(find_idx(folder, images_stem))
        labels = read_idx(find_idx(folder, labels_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"Fashion-MNIST {split} files in '{folder}' disagree: {images.shape} images, {labels.shape} labels."
            )
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    def build_datasets(self):
        ops = [v2.Grayscale(num_output_channels=3)] if self._in_chans == 3 else []
        self._finish = v2.Compose(ops + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])
        augment = v2.Compose([v2.RandomCrop(28, padding=self.crop_padding), v2.RandomHorizontalFlip()])
        augment = augment if self.augment else None
        folder = self.locate()
        train_images, train_labels = self._split(folder, "train")
        if self.train_subset is not None and self.train_subset < len(train_labels):
            keep = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(self.subset_seed))[
                : self.train_subset
            ]
            train_images, train_labels = train_images[keep], train_labels[keep]
        train = TensorImages(train_images, train_labels, augment, self._finish)
        raw = TensorImages(train_images, train_labels, None)
        test = TensorImages(*self._split(folder, "test"), None, self._finish)
        val = test
        if self.val_size:
            plain = TensorImages(train_images, train_labels, None, self._finish)
            train, val, raw = self.split_off_val(train, plain, raw)
        self._raw_train = raw
        return train, val, test
