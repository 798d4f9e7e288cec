"""The soft-label cache: written by `cli.py predict`, replayed by training without teachers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures import every_objective, write_image_folder, write_meal_config_for_data, write_weights
from fixtures import write_meal_config as write_config
from PIL import Image

from cli import main
from datamodules.soft_labels import FILES, CachedCrops, decode_soft_labels, decode_teacher_logits, pixel_box
from errors import ConfigError, DataError


def test_decoded_labels_keep_top_k_and_spread_the_rest_evenly():
    dense = decode_soft_labels(torch.tensor([[0.5, 0.3]]), torch.tensor([[2, 0]]), num_classes=6)
    torch.testing.assert_close(dense, torch.tensor([[0.3, 0.05, 0.5, 0.05, 0.05, 0.05]]))
    assert float(dense.sum()) == pytest.approx(1.0)


def test_decoded_teacher_logits_are_exact_with_every_class_and_fill_the_tail_with_the_smallest_stored():
    every = decode_teacher_logits(torch.tensor([[3.0, 1.0, -2.0]]), torch.tensor([[1, 2, 0]]), num_classes=3)
    torch.testing.assert_close(every, torch.tensor([[-2.0, 3.0, 1.0]]))
    top2 = decode_teacher_logits(torch.tensor([[3.0, 1.0]]), torch.tensor([[1, 2]]), num_classes=4)
    torch.testing.assert_close(top2, torch.tensor([[1.0, 3.0, 1.0, 1.0]]))


@pytest.mark.parametrize("objective", [cls.__name__ for cls in every_objective()])
def test_cached_step_equals_the_online_step_on_the_same_crops_with_every_class_stored(tmp_path, monkeypatch, objective):
    """Every term from the cache (all 10 classes stored) matches the teachers run on the same crops, for MEAL V2's
    objective and for each that reads the mean logits and the labels (Hinton KD, DKD, DIST)."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    choice = [f"--model.init_args.objective=lightning_modules.objectives.{objective}"]
    cli = main(["predict", "--config", str(config), *cache_args(tmp_path, top_k=10), *choice])
    data, module = cli.datamodule, cli.model
    replay = CachedCrops(data.raw_train_set(), data.soft_label_store, data.render)
    images, labels, soft, logits = (
        torch.stack([torch.as_tensor(replay[i][j]) for i in range(0, 288, 17)]) for j in range(4)
    )
    with torch.no_grad():
        online = module.distillation_losses(images, labels, epoch=30.0)  # past DKD's warm-up
        cached = module.distillation_losses(images, labels, cached=(soft, logits), epoch=30.0)
    assert float(online["discriminator"]) > 0.1 and float(online["kd"]) > 0  # the terms are really compared
    for name in ("kd", "discriminator", "loss"):
        torch.testing.assert_close(cached[name], online[name], atol=2e-3, rtol=1e-3)


def test_a_cache_of_all_training_images_serves_a_run_that_holds_some_out(tmp_path, monkeypatch):
    """Choices are made on held-out training images from the same cache: the run trains on its rows only."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path)])
    held_out = ["--model.init_args.soft_targets=cached", "--data.init_args.val_size=16", "--data.init_args.val_seed=3"]
    cli = main(["fit", "--config", str(config), *cache_args(tmp_path), *held_out, "--trainer.max_epochs=1"])
    data = cli.datamodule
    everything, rows = data.cache_images()
    train, val = data.train_set, data.val_set
    assert (len(everything), len(rows), len(train), len(val)) == (96, 80, 80 * 3, 16)
    assert torch.equal(everything.images[rows], data.raw_train_set().images)  # rows are the training images
    kept = {tuple(image.flatten().tolist()) for image in data.raw_train_set().images}
    assert not any(tuple(image.flatten().tolist()) in kept for image in val.images), "a val image is trained on"
    for virtual in (0, 5, 3 * 79 + 2):  # each replayed label is its own image's
        assert train[virtual][1] == everything.labels[rows[virtual // 3]]


def test_a_cache_without_every_class_cannot_serve_an_objective_that_needs_the_logits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path)])  # top_k 4 of 10
    hinton = [
        "--model.init_args.objective=lightning_modules.objectives.HintonKD",
        "--model.init_args.soft_targets=cached",
    ]
    with pytest.raises(ConfigError, match="HintonKD needs every class's teacher logit.*top 4 of 10.*top_k 10") as info:
        main(["fit", "--config", str(config), *cache_args(tmp_path), *hinton])
    assert "\n" not in str(info.value)


def cache_args(tmp_path, **extra) -> list[str]:
    args = [
        f"--data.init_args.soft_labels.dir={tmp_path / 'cache'}",
        "--data.init_args.soft_labels.crops=3",
        "--data.init_args.soft_labels.top_k=4",
    ]
    return args + [f"--data.init_args.soft_labels.{k}={v}" for k, v in extra.items()]


def test_predict_writes_a_complete_cache_that_matches_the_teachers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    cli = main(["predict", "--config", str(config), *cache_args(tmp_path)])
    store = cli.datamodule.soft_label_store
    arrays = {k: np.array(v) for k, v in store.arrays.items()}
    assert arrays["done"].all() and arrays["values"].shape == (96, 3, 4)
    assert (np.abs(arrays["boxes"][..., :2]) <= 2 / 28 + 1e-6).all() and np.allclose(arrays["boxes"][..., 2:], 1.0)
    assert set(np.unique(arrays["flips"])) <= {0, 1}
    assert (np.diff(arrays["values"].astype(np.float32), axis=-1) <= 0).all()

    # the replayed crop of image 5, crop 1 is what the teachers saw; its top-1 is theirs
    replay = CachedCrops(cli.datamodule.raw_train_set(), store, cli.datamodule.render)
    image, _, soft, _ = replay[5 * 3 + 1]
    with torch.no_grad():
        probabilities = cli.model.teachers(image[None]).float().softmax(-1).mean(0)[0]
    assert int(soft.argmax()) == int(probabilities.argmax())
    top = arrays["indices"][5, 1].astype(np.int64)  # uint8 for 10 classes: as an index it would be a mask
    torch.testing.assert_close(soft[top], probabilities[top], atol=2e-3, rtol=0)


def test_predict_resumes_and_shards_fill_disjoint_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    first = main(
        ["predict", "--config", str(config), *cache_args(tmp_path, shard=0, num_shards=2)]
    ).datamodule.soft_label_store
    done = np.array(first.arrays["done"])
    assert done[0::2].all() and not done[1::2].any()
    before = np.array(first.arrays["values"][0::2])
    second = main(
        ["predict", "--config", str(config), *cache_args(tmp_path, shard=1, num_shards=2)]
    ).datamodule.soft_label_store
    assert np.array(second.arrays["done"]).all()
    np.testing.assert_array_equal(np.array(second.arrays["values"][0::2]), before)


@pytest.mark.slow
def test_predict_under_ddp_shares_the_pending_images_and_matches_one_process(tmp_path, monkeypatch):
    """Half the cache from one process (shard 0 of 2), the rest from 2 DDP processes: the same cache as one run."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    main(["predict", "--config", str(config), *cache_args(tmp_path, shard=0, num_shards=2)])
    ddp = ["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    main(["predict", "--config", str(config), *cache_args(tmp_path), *ddp])
    reference = tmp_path / "reference"
    main(["predict", "--config", str(config), *cache_args(reference)])
    shared, alone = (
        {name: np.load(root / "cache" / f"{name}.npy") for name in FILES} for root in (tmp_path, reference)
    )
    assert shared["done"].all()
    for name in ("boxes", "flips", "indices"):
        np.testing.assert_array_equal(shared[name], alone[name])
    np.testing.assert_allclose(shared["values"].astype(np.float32), alone["values"].astype(np.float32), atol=1e-3)


def test_training_from_the_cache_runs_no_teacher(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path)])

    calls = []
    from lightning_modules.teachers import TeacherEnsemble

    original = TeacherEnsemble.forward
    monkeypatch.setattr(
        TeacherEnsemble, "forward", lambda self, x: calls.append(torch.is_grad_enabled()) or original(self, x)
    )
    cli = main(
        [
            "fit",
            "--config",
            str(config),
            *cache_args(tmp_path),
            "--model.init_args.soft_targets=cached",
            "--trainer.max_epochs=1",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.limit_val_batches=0",
        ]
    )
    assert cli.trainer.global_step == 4 and calls == []
    assert float(cli.trainer.callback_metrics["train/kd_loss"]) > 0


def test_cached_mode_without_a_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError,
        match="soft_targets is 'cached' but the data has no soft-label cache: set data.init_args.soft_labels.dir",
    ):
        main(
            [
                "fit",
                "--config",
                str(write_config(tmp_path, cutmix_prob=0.0)),
                "--model.init_args.soft_targets=cached",
                "--trainer.num_sanity_val_steps=0",
            ]
        )


def older_format(tmp_path):
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    del meta["format"]  # what caches made before the mean logits were stored look like
    (tmp_path / "cache" / "meta.json").write_text(json.dumps(meta))


CACHED = ("fit", "--model.init_args.soft_targets=cached")
HALF = {"shard": 0, "num_shards": 2}


@pytest.mark.parametrize(
    "made, change, use, message",
    [
        ({}, older_format, CACHED, r"made for other cache format \(made by an older version\).*predict`"),
        (HALF, None, CACHED, "incomplete .48 images missing.*predict"),
        ({}, "train_subset", CACHED, r"made for other training images \(data files or subset\).*predict`"),
        ({}, "teacher", CACHED, r"made for other teachers \(names or weights\)"),
        ({}, "teacher", ("predict",), r"made for other teachers \(names or weights\)"),  # resuming generation too
        (HALF, None, ("predict", *(f"--data.init_args.soft_labels.{a}" for a in ("shard=1", "num_shards=2", "top_k=5"))),
         r"made for other top_k \(4 != 5 now\)"),
    ],
    ids=["older format", "incomplete", "other training subset", "other teachers", "other teachers resuming", "top_k"],
)  # fmt: skip
def test_a_cache_made_for_something_else_is_refused_in_one_line(tmp_path, monkeypatch, made, change, use, message):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    subset = ["--data.init_args.train_subset=64"] if change == "train_subset" else []
    main(["predict", "--config", str(config), *cache_args(tmp_path, **made), *subset])
    if change == "teacher":
        write_weights(tmp_path / "t0.pt", "cifar_resnet8", 10, in_chans=1, seed=99)  # the first teacher is retrained
    elif callable(change):
        change(tmp_path)
    subset = subset + ["--data.init_args.subset_seed=1"] if subset else []
    with pytest.raises(DataError, match=message) as info:
        main([use[0], "--config", str(config), *cache_args(tmp_path), *subset, *use[1:]])
    assert "\n" not in str(info.value)


def fit_one_epoch_from_cache(config, tmp_path, **cache):
    args = ["--model.init_args.soft_targets=cached", "--model.init_args.cutmix_prob=0.0", "--trainer.max_epochs=1"]
    return main(
        ["fit", "--config", str(config), *cache_args(tmp_path, **cache), *args, "--trainer.limit_val_batches=0"]
    )


@pytest.fixture
def image_folder_cache(tmp_path, monkeypatch):
    """`predict` over a JPEG ImageFolder (40x56 images, 3 crops each at 32 px), and its config."""
    monkeypatch.chdir(tmp_path)
    root = write_image_folder(tmp_path / "images", num_classes=3, train_per_class=4, val_per_class=2, size=40)
    for path in (root / "train").rglob("*.JPEG"):  # non-square images, so boxes and resizes are not trivial
        Image.open(path).resize((56, 40)).save(path, quality=90)
    data = {
        "class_path": "ImageFolderData",
        "init_args": {"data_dir": str(root), "image_size": 32, "batch_size": 4, "num_workers": 0},
    }
    config = write_meal_config_for_data(tmp_path, data, num_classes=3)
    cli = main(["predict", "--config", str(config), *cache_args(tmp_path, top_k=2)])
    return cli, config


def test_image_folder_cache_stores_random_resized_crops_the_teachers_reproduce(image_folder_cache):
    cli, _ = image_folder_cache
    store, data = cli.datamodule.soft_label_store, cli.datamodule
    boxes = np.array(store.arrays["boxes"])
    assert np.array(store.arrays["done"]).all() and boxes.shape == (12, 3, 4)
    assert (boxes[..., :2] >= 0).all() and (boxes[..., :2] + boxes[..., 2:] <= 1 + 1e-6).all()
    area = boxes[..., 2] * boxes[..., 3]
    assert (area >= 0.08 - 0.02).all() and (area <= 1.0 + 1e-6).all() and len(np.unique(area)) > 20

    replay = CachedCrops(data.raw_train_set(), store, data.render)
    for index, crop in [(0, 0), (7, 2), (11, 1)]:
        image, _, soft, _ = replay[index * 3 + crop]
        assert image.shape == (3, 32, 32)
        with torch.no_grad():
            probabilities = cli.model.teachers(image[None]).float().softmax(-1).mean(0)[0]
        top = np.array(store.arrays["indices"][index, crop]).astype(np.int64)
        torch.testing.assert_close(soft[top], probabilities[top], atol=2e-3, rtol=0)


def test_image_folder_replayed_crop_equals_the_online_crop_for_the_same_box_and_flip(image_folder_cache, monkeypatch):
    cli, _ = image_folder_cache
    store, data = cli.datamodule.soft_label_store, cli.datamodule
    replay = CachedCrops(data.raw_train_set(), store, data.render)
    online = data.train_set.transform  # what training without the cache applies to each decoded image
    import datamodules.image_folder as image_folder

    for index, crop in [(2, 0), (9, 1)]:
        raw, _ = data.raw_train_set()[index]
        box = pixel_box(store.arrays["boxes"][index, crop], *raw.shape[-2:])
        flip = bool(store.arrays["flips"][index, crop])
        monkeypatch.setattr(image_folder, "random_resized_box", lambda *args, box=box: box)
        monkeypatch.setattr(image_folder.torch, "rand", lambda *args, flip=flip: torch.tensor(0.0 if flip else 1.0))
        pil = Image.open(data.raw_train_set().samples[index][0]).convert("RGB")
        assert torch.equal(online(pil), replay[index * 3 + crop][0])


def test_cache_for_image_folders_refuses_changed_files(image_folder_cache, tmp_path):
    _, config = image_folder_cache
    extra = tmp_path / "images" / "train" / "class_0" / "extra.JPEG"
    Image.new("RGB", (40, 40)).save(extra)
    with pytest.raises(DataError, match="made for other (training images|number of training images)"):
        main(
            [
                "fit",
                "--config",
                str(config),
                *cache_args(tmp_path, top_k=2),
                "--model.init_args.soft_targets=cached",
                "--model.init_args.cutmix_prob=0.0",
            ]
        )


def test_training_from_an_image_folder_cache_runs_no_teacher(image_folder_cache, tmp_path, monkeypatch):
    _, config = image_folder_cache
    from lightning_modules.teachers import TeacherEnsemble

    calls = []
    original = TeacherEnsemble.forward
    monkeypatch.setattr(TeacherEnsemble, "forward", lambda self, x: calls.append(1) or original(self, x))
    cli = fit_one_epoch_from_cache(config, tmp_path, top_k=2)
    assert (
        cli.trainer.global_step == 12 // 4 and calls == []
    )  # each image once per epoch, through one of its stored crops


def test_several_crops_per_decoded_image_fill_the_batch_without_repeating(image_folder_cache, tmp_path):
    _, config = image_folder_cache
    cli = fit_one_epoch_from_cache(config, tmp_path, top_k=2, crops_per_sample=3)
    data = cli.datamodule
    images, labels, soft, logits = next(iter(data.train_dataloader()))
    assert images.shape == (4 * 3, 3, 32, 32) and labels.shape == (12,) and soft.shape == logits.shape == (12, 3)
    assert torch.equal(labels.view(4, 3), labels.view(4, 3)[:, :1].expand(4, 3))  # 3 crops of one image, side by side
    first = data.train_set[5 * 3 + 2][0]  # image 5 from its crop 2: crops 2, 0, 1 (all of them, none twice)
    assert [torch.equal(first[j], data.train_set[5 * 3 + c][0][0]) for j, c in enumerate((2, 0, 1))] == [True] * 3
    assert cli.trainer.global_step == 12 // 4


def test_teachers_label_the_same_crops_at_their_own_resolution(image_folder_cache, tmp_path):
    cli, config = image_folder_cache
    student_store = cli.datamodule.soft_label_store
    high = main(
        [
            "predict",
            "--config",
            str(config),
            *cache_args(tmp_path, top_k=2, dir=tmp_path / "cache48", teacher_image_size=48),
        ]
    )
    store, data = high.datamodule.soft_label_store, high.datamodule
    np.testing.assert_array_equal(
        np.array(store.arrays["boxes"]), np.array(student_store.arrays["boxes"])
    )  # same crops, seeded

    raw, _ = data.raw_train_set()[4]
    box = pixel_box(store.arrays["boxes"][4, 1], *raw.shape[-2:])
    teacher_view = data.render(raw, box, bool(store.arrays["flips"][4, 1]), size=48)
    with torch.no_grad():
        probabilities = high.model.teachers(teacher_view[None]).float().softmax(-1).mean(0)[0]
    top = np.array(store.arrays["indices"][4, 1]).astype(np.int64)
    torch.testing.assert_close(
        torch.from_numpy(np.array(store.arrays["values"][4, 1])).float(), probabilities[top], atol=2e-3, rtol=0
    )
    assert CachedCrops(data.raw_train_set(), store, data.render)[4 * 3 + 1][0].shape == (
        3,
        32,
        32,
    )  # the student replays at 32
    with pytest.raises(DataError, match=r"made for other teacher resolution \(48 != 64 now\)"):
        main(
            [
                "predict",
                "--config",
                str(config),
                *cache_args(tmp_path, top_k=2, dir=tmp_path / "cache48", teacher_image_size=64),
            ]
        )


def test_cache_generation_checks_the_ensemble_on_val_first_and_reports_its_cost(image_folder_cache):
    cli, _ = image_folder_cache
    meta = json.loads((cli.datamodule.soft_label_store.folder / "meta.json").read_text())
    correct = total = 0
    with torch.no_grad():
        for images, labels in cli.datamodule.val_dataloader():
            correct += int((cli.model.teachers(images).float().softmax(-1).mean(0).argmax(-1) == labels).sum())
            total += len(labels)
    assert meta["ensemble_val_top1"] == {"top1": round(100 * correct / total, 2), "images": 6}
    assert (
        cli.datamodule.soft_label_store.bytes_per_image() == 3 * (16 + 1 + 2 * 2 + 2 * 2 + 2 * 1) + 4 + 1
    )  # per crop: box, flip, fp16 values and logits, uint8 indices; per image: CRC, done


def test_cache_set_for_an_online_run_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path)])
    with pytest.raises(ValueError, match="data.soft_labels is set but model.soft_targets is 'online'") as info:
        main(["fit", "--config", str(config), *cache_args(tmp_path)])
    assert "\n" not in str(info.value) and not (tmp_path / "runs" / "meal" / "version_1" / "checkpoints").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate values.npy", r"values.npy is unreadable or truncated"),
        ("delete logits.npy", r"logits.npy is missing"),
        ("garble meta.json", r"meta.json cannot be read"),
        ("shrink flips.npy", r"flips.npy has shape \(10, 3\), meta.json says \(96, 3\)"),
    ],
)
def test_damaged_cache_is_refused_in_one_line(tmp_path, monkeypatch, damage, message):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path)])
    cache = tmp_path / "cache"
    if damage.startswith("truncate"):
        (cache / "values.npy").write_bytes((cache / "values.npy").read_bytes()[:-100])
    elif damage.startswith("delete"):
        (cache / "logits.npy").unlink()
    elif damage.startswith("garble"):
        (cache / "meta.json").write_text("{not json")
    else:
        np.save(cache / "flips.npy", np.zeros((10, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=message) as info:
        main(["fit", "--config", str(config), *cache_args(tmp_path), "--model.init_args.soft_targets=cached"])
    assert "\n" not in str(info.value) and "python cli.py predict" in str(info.value)


@pytest.fixture
def made_cache(tmp_path, monkeypatch):
    """A complete cache of the tiny data (96 images x 3 crops, top 4 of 10 classes) and its config."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path)])
    return config, tmp_path / "cache"


def rewrite_rows(cache, change, seed_of=None) -> None:
    """``change(arrays)`` on the cache's arrays, with the CRCs recomputed (by a store seeded by ``seed_of``'s meta)."""
    from datamodules.soft_labels import ROWS, SoftLabelStore

    meta = json.loads((cache / "meta.json").read_text())
    store = SoftLabelStore(cache, seed_of or meta, "r+")
    change(store.arrays)
    for index in range(meta["images"]):
        store.arrays["crc"][index] = store.row_crc(index, {name: np.array(store.arrays[name][index]) for name in ROWS})
    for array in store.arrays.values():
        array.flush()


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            "rows of another cache",
            r"image \d+: its rows fail their CRC \(changed, zeroed or copied from another cache\)",
        ),
        ("rows zeroed, marked done", r"image 5: its rows fail their CRC"),
        ("two images' rows swapped", r"image [34]: its rows fail their CRC"),
        ("NaN targets", r"image 7: its targets are not finite"),
    ],
)
def test_a_cache_whose_rows_are_not_what_was_written_is_refused_naming_the_image(made_cache, damage, message):
    config, cache = made_cache
    if damage == "rows of another cache":  # same shapes, made for other images: its arrays with their own CRCs
        meta = json.loads((cache / "meta.json").read_text())
        other = {**meta, "fingerprint": {**meta["fingerprint"], "data": "0" * 64}}
        rewrite_rows(cache, lambda arrays: None, seed_of=other)
    elif damage.startswith("rows zeroed"):
        for name in ("values", "logits", "indices", "boxes"):
            array = np.load(cache / f"{name}.npy", mmap_mode="r+")
            array[5] = 0
            array.flush()
    elif damage.startswith("two images"):
        for name in ("values", "logits", "indices", "boxes", "flips", "crc"):
            array = np.load(cache / f"{name}.npy", mmap_mode="r+")
            array[[3, 4]] = array[[4, 3]]
            array.flush()
    else:
        rewrite_rows(cache, lambda arrays: arrays["values"].__setitem__((7, 1, 0), np.nan))
    with pytest.raises(DataError, match=message) as info:
        fit_one_epoch_from_cache(config, cache.parent)
    assert "\n" not in str(info.value) and f"Soft-label cache '{cache}'" in str(info.value)
    assert "make it again with `python cli.py predict`" in str(info.value)


def test_a_full_disk_while_making_a_cache_is_one_line_and_a_rerun_finishes_it(tmp_path):
    import resource
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = write_config(tmp_path, cutmix_prob=0.0)
    predict = [sys.executable, str(root / "cli.py"), "predict", "--config", str(config), *cache_args(tmp_path)]
    predict += [
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
    ]  # no config.yaml: the cache fills the disk

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large file fails with EFBIG, as a full disk would
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # values.npy (96 x 3 x 4 fp16) does not fit

    result = subprocess.run(predict, cwd=tmp_path, capture_output=True, text=True, preexec_fn=small_files)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: Soft-label cache '{tmp_path / 'cache'}': no room for ") and "File too large" in line
    assert not (tmp_path / "cache/meta.json").exists()

    subprocess.run(predict, cwd=tmp_path, check=True, capture_output=True)  # space freed: the same command
    assert np.load(tmp_path / "cache/done.npy").all()


def small_store(tmp_path, images: int = 24, crops: int = 3, classes: int = 4):
    """A complete cache of random valid rows for ``images`` blank 8x8 images, written but not committed."""
    from datamodules.soft_labels import SoftLabelCache, SoftLabelStore

    config = SoftLabelCache(dir=str(tmp_path / "cache"), crops=crops, top_k=classes)
    store = SoftLabelStore.create_or_resume(config, images, classes, "Test", {"data": "x", "teachers": [], "crop": {}})
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(classes), size=(images, crops))
    store.write(
        np.arange(images),
        boxes=np.tile([0.0, 0.0, 1.0, 1.0], (images, crops, 1)),
        flips=rng.integers(0, 2, (images, crops)),
        values=probabilities,
        logits=np.log(probabilities),
        indices=np.tile(np.arange(classes), (images, crops, 1)),
    )
    return store


def test_a_new_cache_never_writes_into_a_folder_holding_a_users_files(tmp_path):
    from datamodules.soft_labels import DataError

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "logits.npy").write_text("mine")
    with pytest.raises(DataError, match=r"holds logits.npy and is not a soft-label cache this project started"):
        small_store(tmp_path)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["logits.npy"]
    assert (tmp_path / "cache" / "logits.npy").read_text() == "mine"


def test_written_rows_count_as_done_only_once_committed(tmp_path):
    store = small_store(tmp_path)
    assert len(store.pending()) == 24  # a run killed now makes these images again
    assert store.commit() == 24
    assert len(store.pending()) == 0 and np.load(tmp_path / "cache" / "done.npy").all()


def test_training_reads_the_cache_once_per_batch(tmp_path, monkeypatch):
    from torch.utils.data import DataLoader

    from datamodules.fashion_mnist import TensorImages

    store = small_store(tmp_path)
    store.commit()
    raw = TensorImages(torch.zeros(24, 1, 8, 8, dtype=torch.uint8), torch.arange(24) % 4, None)
    replay = CachedCrops(raw, store, lambda image, box, flip: image.float())
    reads = []
    original = store.checked_rows
    monkeypatch.setattr(store, "checked_rows", lambda indices: reads.append(len(indices)) or original(indices))
    batches = list(DataLoader(replay, batch_size=8, sampler=range(0, 72, 3)))
    assert reads == [8, 8, 8]
    one_by_one = [replay[i] for i in range(0, 72, 3)]
    torch.testing.assert_close(batches[1][2], torch.stack([item[2] for item in one_by_one[8:16]]))
    torch.testing.assert_close(batches[1][3], torch.stack([item[3] for item in one_by_one[8:16]]))


def test_seeds_differ_in_each_images_crop_order_and_seed_zero_starts_at_image_plus_epoch():
    from datamodules.base import EpochShuffle

    def first_crop(seed: int, epoch: int) -> dict[int, int]:
        return {v // 8: v % 8 for v in EpochShuffle(100, seed, epoch, crops=8)}

    assert first_crop(0, 2) == {i: (i + 2) % 8 for i in range(100)}
    assert len({tuple(first_crop(seed, 0).values()) for seed in (0, 1, 2)}) == 3
    assert first_crop(1, 3) == {i: (r + 3) % 8 for i, r in first_crop(1, 0).items()}  # a seed rotates on by epoch


def test_a_mixed_cache_replays_the_very_image_its_teachers_labelled(tmp_path, monkeypatch):
    """Consistent teaching: each stored crop is mixed with another image's stored crop; training replays the mix the
    ensemble labelled, so the cached step equals the online step on it (every class stored)."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    cli = main(["predict", "--config", str(config), *cache_args(tmp_path, top_k=10, mixup_alpha=1.0)])
    data, module, store = cli.datamodule, cli.model, cli.datamodule.soft_label_store
    partners, lambdas = np.array(store.arrays["partners"]), np.array(store.arrays["lambdas"])
    assert (partners[..., 0] != np.arange(96)[:, None]).all() and ((0 < lambdas) & (lambdas < 1)).all()
    replay = CachedCrops(data.raw_train_set(), store, data.render)
    images, labels, soft, logits = (
        torch.stack([torch.as_tensor(replay[i][j]) for i in range(0, 288, 17)]) for j in range(4)
    )
    plain = CachedCrops.views(replay, np.array([5]), store.arrays["boxes"][5, 1], store.arrays["flips"][5, 1])[0][0]
    assert not torch.allclose(replay[5 * 3 + 1][0], plain, atol=1e-3)  # a mix, not the image's own crop
    pair = CachedCrops(data.raw_train_set(), store, data.render, per_sample=2)[5 * 3 + 1]  # crops 1 and 2 of image 5
    torch.testing.assert_close(pair[0], torch.stack([replay[5 * 3 + 1][0], replay[5 * 3 + 2][0]]))
    with torch.no_grad():
        online = module.distillation_losses(images, labels)
        cached = module.distillation_losses(images, labels, cached=(soft, logits))
    for name in ("kd", "discriminator", "loss"):
        torch.testing.assert_close(cached[name], online[name], atol=2e-3, rtol=1e-3)
    fit = ["fit", "--config", str(config), "--model.init_args.soft_targets=cached", "--trainer.max_epochs=1"]
    assert main([*fit, *cache_args(tmp_path, top_k=10, mixup_alpha=1.0)]).trainer.global_step == 4


@pytest.mark.parametrize(
    "args, message",
    [((), r"made for other mixing \(mixup_alpha of consistent teaching\) \(1.0 != null now\)"),
     (("--data.init_args.val_size=16",), "mixes crops of any training image, held-out ones included")],
    ids=["plain run", "held-out images"],
)  # fmt: skip
def test_a_mixed_cache_serves_only_runs_that_ask_for_it_on_all_training_images(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path, mixup_alpha=1.0)])
    mixed = ("--data.init_args.soft_labels.mixup_alpha=1.0",) if args else ()
    with pytest.raises(DataError, match=message) as info:
        main(
            [
                "fit",
                "--config",
                str(config),
                *cache_args(tmp_path),
                "--model.init_args.soft_targets=cached",
                *mixed,
                *args,
            ]
        )
    assert "\n" not in str(info.value)
