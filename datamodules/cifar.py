"""CIFAR-10 / CIFAR-100 in torchvision's on-disk format (python pickles), standard augmentation."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from datamodules.base import ClassificationDataModule, DataError
from datamodules.soft_labels import SoftLabelCache
from errors import downloading

_STATS = {
    "cifar10": (10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), datasets.CIFAR10),
    "cifar100": (100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), datasets.CIFAR100),
}
_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


# What the official CIFAR batches (Python 2 pickles of dicts, lists, strings and NumPy arrays) may name; a pickle
# naming anything else (os.system, a class of some package) is refused before it can run.
_SAFE_GLOBALS = (
    {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {
        (module, "_frombuffer")
        for module in ("numpy.core.numeric", "numpy._core.numeric")  # arrays pickled with protocol 5
    }
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
)


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which CIFAR data never holds")
        return super().find_class(module, name)


def load_data_pickle(path: Path):
    """A CIFAR python batch, read with an unpickler that admits only the types such files hold: no code runs."""
    with open(path, "rb") as handle:
        return _DataOnlyUnpickler(handle, encoding="latin1").load()


class CIFARPickles(Dataset):
    """Reads the official python-pickle batches (the files torchvision downloads) into memory."""

    def __init__(self, root: Path, variant: str, train: bool, transform: Optional[Callable] = None):
        folder, train_files, test_files, label_key = _FILES[variant]
        images, labels = [], []
        for name in train_files if train else test_files:
            path = root / folder / name
            if not path.is_file():
                raise DataError(
                    f"{variant} file '{path}' not found: set data.download=true or point data.data_dir at it."
                )
            try:
                batch = load_data_pickle(path)
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.extend(int(v) for v in batch[label_key])
            except pickle.UnpicklingError as err:
                raise DataError(
                    f"{variant} file '{path}' is not plain CIFAR data ({err}): refused unread; delete it and download "
                    "again (data.download=true)."
                ) from None
            except (KeyError, ValueError, EOFError, TypeError, IndexError) as err:
                raise DataError(
                    f"{variant} file '{path}' is corrupt ({type(err).__name__}): delete it and download again."
                ) from None
        self.images = np.concatenate(images)
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), self.labels[index]


class CIFARData(ClassificationDataModule):
    """CIFAR-10/100 from ``data_dir`` (``cifar-10-batches-py`` / ``cifar-100-python``).

    Train: 4-pixel padded random crop + horizontal flip; test: the official test split, which is also
    val unless ``val_size`` training images are held out for it (seeded by ``val_seed``; only then is a
    "best" epoch selected).
    """

    def __init__(
        self,
        data_dir: str = "data",
        variant: Literal["cifar10", "cifar100"] = "cifar100",
        download: bool = False,
        val_size: int = 0,
        val_seed: int = 0,
        batch_size: int = 128,
        num_workers: int = 4,
        soft_labels: Optional[SoftLabelCache] = None,
        predict_files: Optional[list[str]] = None,
    ):
        super().__init__(batch_size, num_workers, soft_labels, predict_files)
        self._check_val_size(val_size)
        self.val_size, self.val_seed = val_size, val_seed
        if variant not in _STATS:
            raise DataError(f"Unknown CIFAR variant '{variant}': use 'cifar10' or 'cifar100'.")
        self.data_dir = Path(data_dir)
        self.variant = variant
        self.download = download
        self._num_classes, self._mean, self._std, self._downloader = _STATS[variant]

    image_size = 32
    crop_padding = 4

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        """From the data set's own meta file (``batches.meta`` / ``meta``), else the label numbers."""
        folder, _, _, _ = _FILES[self.variant]
        meta, key = ("batches.meta", "label_names") if self.variant == "cifar10" else ("meta", "fine_label_names")
        try:
            names = load_data_pickle(self.data_dir / folder / meta)[key]
        except (OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError):
            return super().class_names
        return [str(name) for name in names] if len(names) == self.num_classes else super().class_names

    def prepare_data(self) -> None:
        if self.download:
            with downloading(
                self.variant,
                str(self.data_dir),
                f"Put the python-version files under {self.data_dir} and set data.download=false",
            ):
                for train in (True, False):
                    self._downloader(str(self.data_dir), train=train, download=True)

    def build_datasets(self):
        self._finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self._mean, self._std)])
        to_tensor = v2.PILToTensor()
        train_tf = v2.Compose(
            [to_tensor, v2.RandomCrop(32, padding=self.crop_padding), v2.RandomHorizontalFlip(), self._finish]
        )
        train = CIFARPickles(self.data_dir, self.variant, train=True, transform=train_tf)
        plain = v2.Compose([to_tensor, self._finish])
        test = CIFARPickles(self.data_dir, self.variant, train=False, transform=plain)
        raw, val = copy.copy(train), test
        raw.transform = to_tensor  # the same images (read once), without augmentation
        if self.val_size:
            unaugmented = copy.copy(train)
            unaugmented.transform = plain
            train, val, raw = self.split_off_val(train, unaugmented, raw)
        self._raw_train = raw
        return train, val, test
