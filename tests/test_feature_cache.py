"""The offline log-mel cache: equal to the model's front-end, reused, rebuilt on change, same results."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
from conftest import TAU_DURATION as DURATION
from conftest import TAU_RATE as RATE

from datamodules import TAUScenesDataModule
from datamodules.feature_cache import CachedFeatureDataset, build_feature_cache
from models import AudioSceneClassifier


def _data(root, cache) -> TAUScenesDataModule:
    return TAUScenesDataModule(
        str(root), sample_rate=RATE, duration=DURATION, batch_size=8, feature_cache=cache and str(cache)
    )


def _model(data: TAUScenesDataModule, n_mels: int = 32, **options) -> AudioSceneClassifier:
    front = {"n_fft": 512, "hop_length": 256, "n_mels": n_mels}
    return AudioSceneClassifier(
        data.num_classes,
        data.input_shape,
        RATE,
        arch="small_cnn",
        class_names=data.class_names,
        frontend=front,
        **options,
    )


def _trainer(tmp_path) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def test_cache_holds_the_models_log_mels_and_is_rebuilt_when_settings_or_files_change(root, tmp_path, caplog):
    cache = tmp_path / "cache"
    data = _data(root, cache)
    model = _model(data)
    with caplog.at_level(logging.INFO, logger="datamodules.feature_cache"):
        _trainer(tmp_path).fit(model, data)
    (built,) = cache.glob("fold1_train-*.npy")
    features = np.load(built)
    reference = _data(root, None)
    reference.setup()
    clips = reference.val_set.dataset  # the training list, evaluation crop
    assert features.shape == (len(clips), 1, 32, 1 + RATE // 256)
    for i in (0, len(clips) - 1):
        wave, _ = clips[i]
        torch.testing.assert_close(torch.from_numpy(features[i]), model.frontend(wave[None])[0], atol=1e-5, rtol=1e-6)
    assert sum("building the log-mel cache" in r.message for r in caplog.records) == 1

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="datamodules.feature_cache"):
        _trainer(tmp_path).fit(_model(data), _data(root, cache))  # same settings and files: reused
    assert not any("building" in r.message for r in caplog.records)
    assert list(cache.glob("fold1_train-*.npy")) == [built]

    _trainer(tmp_path).fit(_model(data, n_mels=24), _data(root, cache))  # another front-end
    assert (
        len(list(cache.glob("fold1_train-*.npy"))) == 2
        and np.load(max(cache.glob("*.npy"), key=lambda p: p.stat().st_mtime_ns)).shape[2] == 24
    )

    first = root / clips.files[0]
    wave, rate = sf.read(first)
    sf.write(first, wave[::-1].copy(), rate)  # same name and length, other content
    _trainer(tmp_path).fit(_model(data), _data(root, cache))
    assert len(list(cache.glob("fold1_train-*.npy"))) == 3
    assert not list(cache.glob("*partial*"))


def test_cached_and_on_the_fly_evaluation_agree(synthetic_root, tmp_path):
    data = _data(synthetic_root, None)
    model = _model(data)
    trainer = _trainer(tmp_path)
    on_the_fly = torch.cat(trainer.predict(model, _data(synthetic_root, None)))
    cached_data = _data(synthetic_root, tmp_path / "cache")
    cached = torch.cat(trainer.predict(model, cached_data))
    assert cached_data.predict_set[0][0].shape == (1, 32, 1 + RATE // 256)  # the loader gave log-mels
    torch.testing.assert_close(cached, on_the_fly, atol=1e-5, rtol=1e-5)
    assert len(list((tmp_path / "cache").glob("fold1_test-*.npy"))) == 1


def test_cache_needs_a_model_front_end_and_a_matching_rate(synthetic_root, tmp_path):
    data = _data(synthetic_root, tmp_path / "cache")
    with pytest.raises(RuntimeError, match="feature_cache needs a model with a log-mel front-end"):
        data.setup()
    other_rate = AudioSceneClassifier(
        5, [8000], 8000, arch="small_cnn", frontend={"n_fft": 256, "hop_length": 128, "n_mels": 16}
    )
    with pytest.raises(ValueError, match="front-end expects 8000 Hz, the data is at 16000 Hz"):
        _trainer(tmp_path).fit(other_rate, data)


def test_cache_of_another_length_is_refused(synthetic_root, tmp_path):
    data = _data(synthetic_root, tmp_path / "cache")
    trainer = _trainer(tmp_path)
    trainer.fit(_model(data), data)
    (built,) = (tmp_path / "cache").glob("fold1_train-*.npy")
    np.save(built, np.load(built)[:3])
    with pytest.raises(ValueError, match="holds 3 clips"):
        _trainer(tmp_path).fit(_model(data), _data(synthetic_root, tmp_path / "cache"))


def test_time_roll_and_augmentation_train_on_cached_log_mels(synthetic_root, tmp_path):
    data = _data(synthetic_root, tmp_path / "cache")
    model = _model(data, time_roll=True, freq_mask=4, time_mask=4, mixup_alpha=0.4)
    before = [p.detach().clone() for p in model.parameters()]
    _trainer(tmp_path).fit(model, data)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_building_the_cache_leaves_the_global_rng_alone(synthetic_root, tmp_path):
    data = _data(synthetic_root, None)
    data.setup()
    frontend = _model(data).frontend
    state = torch.get_rng_state()
    build_feature_cache(tmp_path / "x.npy", data.test_set, frontend, {}, batch_size=4)
    assert torch.equal(torch.get_rng_state(), state)  # so building and reusing runs train alike


def test_cached_dataset_goes_to_workers_without_its_data(synthetic_root, tmp_path):
    import pickle

    data = _data(synthetic_root, None)
    data.setup()
    build_feature_cache(tmp_path / "x.npy", data.test_set, _model(data).frontend, {}, batch_size=4)
    dataset = CachedFeatureDataset(tmp_path / "x.npy", data.test_set.files, data.test_set.labels)
    first = dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert (
        len(pickle.dumps(dataset)) < 0.1 * (tmp_path / "x.npy").stat().st_size
    )  # the file is mapped again, not copied
    assert torch.equal(copy[0][0], first[0]) and copy[0][1] == first[1]
