"""DataModules on tiny fixtures in the real on-disk formats."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from fixtures import write_cifar, write_image_folder
from torchvision import transforms

from datamodules import CIFARData, DataError, ImageFolderData
from datamodules.cifar import load_data_pickle


def test_image_folder_uses_the_method_transforms(tmp_path):
    data = ImageFolderData(
        str(write_image_folder(tmp_path, num_classes=2, size=40)), image_size=224, batch_size=2, num_workers=0
    )
    data.setup("fit")
    crop = data.train_set.transform.transforms[-1]  # RandomResizedCrop + flip, replayable by the soft-label cache
    assert (crop.scale, crop.ratio, crop.size, crop.interpolation.value) == (
        (0.08, 1.0),
        (3 / 4, 4 / 3),
        224,
        "bilinear",
    )
    assert [type(t).__name__ for t in data.train_set.transform.transforms] == [
        "PILToTensor",
        "RandomResizedCropAndFlip",
    ]  # no colour jitter
    resize, crop = data.val_set.transform.transforms[:2]
    assert isinstance(resize, transforms.Resize) and resize.size == 256
    assert isinstance(crop, transforms.CenterCrop) and crop.size == (224, 224)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (2, 3, 224, 224) and labels.dtype == torch.int64
    assert (data.num_classes, data.in_chans) == (2, 3)


def test_image_folder_resolution_380_resizes_to_434(tmp_path):
    data = ImageFolderData(
        str(write_image_folder(tmp_path, num_classes=2, size=40)), image_size=380, crop_pct=380 / 434, num_workers=0
    )
    data.setup("validate")
    assert data.val_set.transform.transforms[0].size == 434


def test_image_folder_missing_root_is_one_line_error(tmp_path):
    with pytest.raises(DataError, match="does not exist: set data.data_dir"):
        ImageFolderData(str(tmp_path / "nowhere"))


def test_image_folder_missing_split_or_empty_class_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "a", num_classes=2)
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match="Missing split folder"):
        ImageFolderData(str(root))
    root = write_image_folder(tmp_path / "b", num_classes=2)
    for image in (root / "train" / "class_1").iterdir():
        image.unlink()
    data = ImageFolderData(str(root), num_workers=0)
    with pytest.raises(DataError, match="class_1' has no images"):
        data.setup("fit")


def test_image_folder_split_class_mismatch_is_refused(tmp_path):
    root = write_image_folder(tmp_path, num_classes=3)
    shutil.rmtree(root / "val" / "class_2")
    with pytest.raises(DataError, match="differ"):
        ImageFolderData(str(root))


@pytest.mark.parametrize("variant, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_the_python_pickles(tmp_path, variant, classes):
    data = CIFARData(
        str(write_cifar(tmp_path, variant, train_count=20, test_count=10)), variant=variant, batch_size=5, num_workers=0
    )
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set), data.num_classes) == (20, 10, classes)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (5, 3, 32, 32)
    ops = data.train_set.transform.transforms
    assert [type(t).__name__ for t in ops[1:3]] == ["RandomCrop", "RandomHorizontalFlip"] and ops[1].padding == [
        4,
        4,
        4,
        4,
    ]


def test_cifar_missing_files_say_how_to_get_them(tmp_path):
    data = CIFARData(str(tmp_path), variant="cifar10", num_workers=0)
    with pytest.raises(DataError, match="download=true"):
        data.setup("fit")


def test_sixteen_bit_png_is_scaled_to_eight_bits_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from datamodules.image_folder import load_rgb

    values = np.array([[0, 257 * 100, 40000, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "deep.png")  # a 16-bit grey PNG (PIL mode I;16)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = np.asarray(load_rgb(str(tmp_path / "deep.png")))
    assert rgb.shape == (4, 4, 3) and rgb[0, :, 0].tolist() == [0, 100, 156, 255]  # round(v / 257)


def test_class_names_come_from_the_data(tmp_path):
    import pickle

    from datamodules import FashionMNISTData

    root = write_cifar(tmp_path / "cifar", "cifar10")
    assert CIFARData(str(root), variant="cifar10").class_names == [str(k) for k in range(10)]  # no meta file
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(root / "cifar-10-batches-py" / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": names}, handle)
    assert CIFARData(str(root), variant="cifar10").class_names == names
    folder = write_image_folder(tmp_path / "images", num_classes=2)
    assert ImageFolderData(str(folder)).class_names == ["class_0", "class_1"]
    assert FashionMNISTData().class_names[-1] == "Ankle boot"


def test_image_folder_train_subset_is_a_fixed_seeded_subset_and_workers_follow_the_machine(tmp_path):
    import os

    folder = write_image_folder(tmp_path, num_classes=3, train_per_class=8)
    subsets = []
    for _ in range(2):
        data = ImageFolderData(str(folder), image_size=32, train_subset=5, subset_seed=1)
        data.setup("fit")
        subsets.append([path for path, _ in data.train_set.samples])
    assert len(subsets[0]) == 5 and subsets[0] == subsets[1] and subsets[0] == sorted(subsets[0])
    assert [p for p, _ in data.raw_train_set().samples] == subsets[0]  # the soft-label cache sees the same images
    assert data.num_workers == min(8, len(os.sched_getaffinity(0)))


def test_an_image_reached_again_through_a_link_is_one_sample(tmp_path):
    folder = write_image_folder(tmp_path, num_classes=2, train_per_class=4)
    (folder / "train/class_0/again").symlink_to(folder / "train/class_0", target_is_directory=True)  # a loop
    (folder / "train/class_1/also").symlink_to(folder / "train/class_1", target_is_directory=True)
    data = ImageFolderData(str(folder), image_size=32)
    with pytest.warns(UserWarning, match=r"\d+ image files reached again through links are counted once"):
        data.setup("fit")
    samples = [os.path.realpath(path) for path, _ in data.train_set.samples]
    assert len(samples) == 8 and len(set(samples)) == 8


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_cifar_file_whose_pickle_would_run_code_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_cifar(tmp_path / "cifar", "cifar10")
    victim = next(root.rglob("data_batch_1"))
    victim.write_bytes(pickle.dumps({"data": _RunsCode(), "labels": [0]}))
    data = CIFARData(data_dir=str(root), variant="cifar10", batch_size=4, num_workers=0)
    with pytest.raises(DataError, match=r"data_batch_1' is not plain CIFAR data \(it names (posix|os)\.system") as info:
        data.setup("fit")
    assert not (tmp_path / "pwned").exists() and "\n" not in str(info.value)


def test_cifar_batches_pickled_by_python_2_and_3_both_load(tmp_path):
    root = write_cifar(tmp_path / "cifar", "cifar10")
    batch = next(root.rglob("data_batch_1"))
    plain = load_data_pickle(batch)
    for protocol in (2, 5):
        batch.write_bytes(pickle.dumps(plain, protocol=protocol))
        again = load_data_pickle(batch)
        assert np.array_equal(again["data"], plain["data"]) and again["labels"] == plain["labels"]


def test_images_left_out_of_every_epoch_by_drop_last_are_counted_in_one_line(tmp_path, monkeypatch, caplog):
    import logging

    from fixtures import write_meal_config

    from cli import main

    monkeypatch.chdir(tmp_path)
    config = write_meal_config(tmp_path)  # 96 training images
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--data.init_args.batch_size=40"])
    lines = [r.getMessage() for r in caplog.records if "incomplete batch" in r.getMessage()]
    assert lines == [
        "Each epoch trains 80 of the 96 training images per device: the last incomplete batch (16 images, other ones "
        "each epoch as the order is reshuffled) is dropped; a data.batch_size that divides 96 trains on all of them."
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--data.init_args.batch_size=32"])
    assert not [r for r in caplog.records if "incomplete batch" in r.getMessage()]
