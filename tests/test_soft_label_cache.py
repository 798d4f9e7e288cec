"""The soft-label cache: written by `cli.py predict`, replayed by training without teachers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import write_meal_config as write_config
from fixtures import write_weights

from cli import main
from datamodules.errors import DataError
from datamodules.soft_labels import decode_soft_labels


def test_decoded_labels_keep_top_k_and_spread_the_rest_evenly():
    dense = decode_soft_labels(torch.tensor([[0.5, 0.3]]), torch.tensor([[2, 0]]), num_classes=6)
    torch.testing.assert_close(dense, torch.tensor([[0.3, 0.05, 0.5, 0.05, 0.05, 0.05]]))
    assert float(dense.sum()) == pytest.approx(1.0)


def cache_args(tmp_path, **extra) -> list[str]:
    args = [f"--data.init_args.soft_labels.dir={tmp_path / 'cache'}", "--data.init_args.soft_labels.crops=3",
            "--data.init_args.soft_labels.top_k=4"]
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
    from datamodules.soft_labels import CachedCrops

    replay = CachedCrops(cli.datamodule.raw_train_set(), store, cli.datamodule.finish, 28)
    image, _, soft = replay[5 * 3 + 1]
    with torch.no_grad():
        probabilities = cli.model.teachers(image[None]).float().softmax(-1).mean(0)[0]
    assert int(soft.argmax()) == int(probabilities.argmax())
    torch.testing.assert_close(soft[arrays["indices"][5, 1]], probabilities[arrays["indices"][5, 1]], atol=2e-3, rtol=0)


def test_predict_resumes_and_shards_fill_disjoint_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    first = main(["predict", "--config", str(config), *cache_args(tmp_path, shard=0, num_shards=2)]).datamodule.soft_label_store
    done = np.array(first.arrays["done"])
    assert done[0::2].all() and not done[1::2].any()
    before = np.array(first.arrays["values"][0::2])
    second = main(["predict", "--config", str(config), *cache_args(tmp_path, shard=1, num_shards=2)]).datamodule.soft_label_store
    assert np.array(second.arrays["done"]).all()
    np.testing.assert_array_equal(np.array(second.arrays["values"][0::2]), before)


def test_training_from_the_cache_runs_no_teacher(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path)])

    calls = []
    from lightning_modules.teachers import TeacherEnsemble

    original = TeacherEnsemble.forward
    monkeypatch.setattr(TeacherEnsemble, "forward", lambda self, x: calls.append(torch.is_grad_enabled()) or original(self, x))
    cli = main(["fit", "--config", str(config), *cache_args(tmp_path), "--model.init_args.soft_targets=cached",
                "--trainer.max_epochs=1", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0"])
    assert cli.trainer.global_step == 4 and calls == []
    assert float(cli.trainer.callback_metrics["train/kd_loss"]) > 0


def test_training_from_an_incomplete_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path, shard=0, num_shards=2)])
    with pytest.raises(DataError, match="incomplete .48 images missing.*predict"):
        main(["fit", "--config", str(config), *cache_args(tmp_path), "--model.init_args.soft_targets=cached"])


def test_cached_mode_without_a_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="soft_targets is 'cached' but the data has no soft-label cache: set data.init_args.soft_labels.dir"):
        main(["fit", "--config", str(write_config(tmp_path, cutmix_prob=0.0)), "--model.init_args.soft_targets=cached",
              "--trainer.num_sanity_val_steps=0"])


def test_cache_made_for_another_training_subset_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path), "--data.init_args.train_subset=64"])
    with pytest.raises(DataError, match=r"made for other training images \(data files or subset\).*predict`") as info:
        main(["fit", "--config", str(config), *cache_args(tmp_path), "--model.init_args.soft_targets=cached",
              "--data.init_args.train_subset=64", "--data.init_args.subset_seed=1"])
    assert "\n" not in str(info.value)


def test_cache_made_by_other_teachers_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, cutmix_prob=0.0)
    main(["predict", "--config", str(config), *cache_args(tmp_path)])
    write_weights(tmp_path / "t0.pt", "cifar_resnet8", 10, in_chans=1, seed=99)  # the first teacher's file is retrained
    with pytest.raises(DataError, match=r"made for other teachers \(names or weights\)"):
        main(["fit", "--config", str(config), *cache_args(tmp_path), "--model.init_args.soft_targets=cached"])
    with pytest.raises(DataError, match=r"made for other teachers"):
        main(["predict", "--config", str(config), *cache_args(tmp_path)])  # resuming generation with them is refused too


def test_resuming_generation_with_another_top_k_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    main(["predict", "--config", str(config), *cache_args(tmp_path, shard=0, num_shards=2)])
    with pytest.raises(DataError, match=r"made for other top_k \(4 != 5 now\)"):
        main(["predict", "--config", str(config), *cache_args(tmp_path, shard=1, num_shards=2, top_k=5)])
