"""The TAU Urban Acoustic Scenes reader on the synthetic data set, and every bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import TAU_DURATION as DURATION
from conftest import TAU_RATE as RATE

from datamodules import TAUScenesDataModule, read_file_list
from datamodules.tau_layout import SYNTHETIC_SCENES, device_of


def _data(root, **options) -> TAUScenesDataModule:
    return TAUScenesDataModule(str(root), sample_rate=RATE, duration=DURATION, batch_size=8, **options)


def test_synthetic_set_follows_the_dcase_2020_layout(synthetic_root):
    meta = pd.read_csv(synthetic_root / "meta.csv", sep="\t")
    assert list(meta.columns) == ["filename", "scene_label", "identifier", "source_label"]
    assert (meta["filename"].map(device_of) == meta["source_label"]).all()
    train = read_file_list(synthetic_root, "evaluation_setup/fold1_train.csv", need_labels=True)
    evaluate = read_file_list(synthetic_root, "evaluation_setup/fold1_evaluate.csv", need_labels=True)
    assert not {"s4", "s5", "s6"} & set(train["device"])
    assert {"a", "b", "c", "s1", "s4", "s5", "s6"} <= set(evaluate["device"])
    assert set(train["identifier"]).isdisjoint(evaluate["identifier"])
    info = sf.info(str(synthetic_root / meta["filename"][0]))
    assert (info.samplerate, info.frames, info.channels) == (RATE, RATE, 1)


def test_lists_without_columns_and_with_crlf_are_completed_from_meta(root):
    setup = root / "evaluation_setup"
    names = pd.read_csv(setup / "fold1_train.csv", sep="\t")["filename"]
    (setup / "bare.csv").write_bytes(("filename\r\n" + "".join(f"{n}\r\n" for n in names)).encode())
    table = read_file_list(root, "evaluation_setup/bare.csv", need_labels=True)
    assert table["filename"].tolist() == names.tolist()
    assert table["scene_label"].isin(SYNTHETIC_SCENES).all() and table["identifier"].notna().all()
    (setup / "nolabel.csv").write_text("filename\n" + "audio/not-in-meta-0-0-a.wav\n")
    with pytest.raises(ValueError, match="1 file\\(s\\) of .*nolabel.csv have no scene_label"):
        read_file_list(root, "evaluation_setup/nolabel.csv", need_labels=True)
    (setup / "nofile.csv").write_text("name\tscene_label\nx\tbus\n")
    with pytest.raises(ValueError, match="nofile.csv has no 'filename' column"):
        read_file_list(root, "evaluation_setup/nofile.csv", need_labels=True)
    (root / "meta.csv").unlink()
    with pytest.raises(ValueError, match="bare.csv has no 'scene_label' column"):
        read_file_list(root, "evaluation_setup/bare.csv", need_labels=True)


def test_datamodule_batches_splits_by_location_and_predicts(synthetic_root):
    data = _data(synthetic_root)
    assert data.class_names == sorted(SYNTHETIC_SCENES) and data.input_shape == [RATE]
    data.setup()
    train_ids = set(data.train_table["identifier"].iloc[data.train_set.indices])
    val_ids = set(data.train_table["identifier"].iloc[data.val_set.indices])
    assert val_ids and train_ids.isdisjoint(val_ids)
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (8, RATE) and x.dtype == torch.float32 and y.max() < 5
    wave, label = data.test_set[0]
    expected, _ = sf.read(str(synthetic_root / data.test_set.files[0]), dtype="float32")
    torch.testing.assert_close(wave, torch.from_numpy(expected))
    assert label == data.class_names.index(read_file_list(synthetic_root, data.test_list, True)["scene_label"][0])
    batch_x, batch_y = next(iter(data.predict_dataloader()))
    assert (batch_y == -1).all() and batch_x.shape[1] == RATE


def test_missing_file_is_named(root):
    victim = pd.read_csv(root / "evaluation_setup/fold1_train.csv", sep="\t")["filename"][3]
    (root / victim).unlink()
    with pytest.raises(
        FileNotFoundError, match=f"1 file\\(s\\) listed in .*fold1_train.csv do not exist, e.g. .*{victim}"
    ):
        _data(root).setup()


def test_unreadable_wav_is_named(root):
    victim = pd.read_csv(root / "evaluation_setup/fold1_train.csv", sep="\t")["filename"][0]
    (root / victim).write_bytes(b"RIFF garbage")
    with pytest.raises(RuntimeError, match=f"cannot read audio file .*{victim}"):
        _data(root).setup()


def test_short_clips_error_or_pad_with_count(root):
    """Complete files shorter than ``duration``; truncated files are errors either way
    (tests/test_data_download.py)."""
    names = pd.read_csv(root / "evaluation_setup/fold1_train.csv", sep="\t")["filename"]
    sf.write(root / names[0], np.zeros(RATE // 2, dtype=np.float32), RATE)
    sf.write(root / names[1], np.zeros(RATE // 4, dtype=np.float32), RATE)
    with pytest.raises(ValueError, match="2 clip\\(s\\) .* shorter than duration=1.0 s, e.g. .*short_clips pad"):
        _data(root).setup()
    data = _data(root, short_clips="pad")
    with pytest.warns(UserWarning, match="2 clip\\(s\\) .* zero-padded"):
        data.setup()
    wave, _ = data.train_set.dataset[1]
    assert wave.shape == (RATE,) and wave.abs().sum() == 0


def test_other_rates_are_resampled_and_stereo_mixed_down_with_a_warning(root):
    names = pd.read_csv(root / "evaluation_setup/fold1_train.csv", sep="\t")["filename"]
    t = np.arange(2 * 22050) / 22050
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    sf.write(root / names[0], tone, 22050)  # 2 s at 22.05 kHz
    stereo = np.stack([tone[:RATE], -0.5 * tone[:RATE]], axis=1)
    sf.write(root / names[1], stereo, RATE)
    data = _data(root)
    with pytest.warns(UserWarning) as warned:
        data.setup()
    text = " ".join(str(w.message) for w in warned)
    assert "1 file(s) in" in text and "are not at 16000 Hz and are resampled" in text
    assert "1 file(s) in" in text and "have several channels and are mixed down to mono" in text
    resampled = data.train_set.dataset.load(0)
    assert abs(len(resampled) - 2 * RATE) <= 1
    spectrum = np.abs(np.fft.rfft(resampled.numpy()))
    assert abs(np.argmax(spectrum) * RATE / len(resampled) - 440) < 2  # the tone keeps its pitch
    mixed = data.train_set.dataset.load(1)
    torch.testing.assert_close(mixed, torch.from_numpy(stereo.mean(axis=1)), atol=1e-4, rtol=0)


def test_evaluate_labels_unknown_to_the_model_are_named(root):
    evaluate = pd.read_csv(root / "evaluation_setup/fold1_evaluate.csv", sep="\t")
    evaluate.loc[0, "scene_label"] = "beach"
    evaluate.to_csv(root / "evaluation_setup/fold1_evaluate.csv", sep="\t", index=False)
    with pytest.raises(ValueError, match="fold1_evaluate.csv has scene labels the model does not know .*'beach'"):
        _data(root).setup()


def test_synthesize_only_into_a_folder_without_meta(tmp_path, synthetic_root):
    fresh = tmp_path / "new"
    data = TAUScenesDataModule(str(fresh), sample_rate=RATE, duration=DURATION, synthesize_if_missing=True)
    assert (fresh / "meta.csv").is_file() and data.num_classes == 5
    before = (synthetic_root / "meta.csv").stat().st_mtime_ns
    TAUScenesDataModule(str(synthetic_root), sample_rate=RATE, duration=DURATION, synthesize_if_missing=True)
    assert (synthetic_root / "meta.csv").stat().st_mtime_ns == before  # an existing data set is used as it is


def test_training_subset_split_file_as_in_the_2022_releases(root):
    """The 1-second releases ship train subsets (split5.csv ... split100.csv) next to the fold lists."""
    train = pd.read_csv(root / "evaluation_setup/fold1_train.csv", sep="\t")
    subset = train.groupby("scene_label").head(4)  # a class-balanced subset
    subset.to_csv(root / "split25.csv", sep="\t", index=False)
    data = _data(root, train_list="split25.csv")
    data.setup()
    assert len(data.train_set) + len(data.val_set) == len(subset) == 20
    assert set(data.train_table["filename"]) == set(subset["filename"])


def test_a_training_label_outside_the_label_set_is_refused(root):
    """A typo in the training list used to become a class of its own; meta.csv holds the label set."""
    train = pd.read_csv(root / "evaluation_setup/fold1_train.csv", sep="\t")
    train.loc[4, "scene_label"] = "airprot"
    train.to_csv(root / "evaluation_setup/fold1_train.csv", sep="\t", index=False)
    with pytest.raises(
        ValueError,
        match=r"fold1_train.csv has scene labels the model does not know \(not in the labels of .*meta.csv\): "
        rf"\['airprot'\], e.g. {train.loc[4, 'filename']}",
    ):
        _data(root)


def test_label_set_comes_from_meta_or_the_option(root):
    assert _data(root).class_names == sorted(SYNTHETIC_SCENES)
    order = ["street_traffic", "park", "metro", "bus", "airport"]
    data = _data(root, class_names=order)
    assert data.class_names == order and data.num_classes == 5
    data.setup()
    clips = data.train_set.dataset
    assert [order[label] for label in clips.labels] == [name.split("/")[-1].split("-")[0] for name in clips.files]
    with pytest.warns(UserWarning, match=r"no clip of the scene label\(s\) \['tram'\]"):
        assert _data(root, class_names=[*order, "tram"]).num_classes == 6
    with pytest.raises(ValueError, match="not in the class_names option"):
        _data(root, class_names=order[:4])


def test_device_comes_from_the_lists_column_or_a_tau_file_name(root):
    assert device_of("audio/airport-lisbon-1000-40000-s4.wav") == "s4"
    assert device_of("audio/airport-lisbon-1000-40000-0-a.wav") == "a"  # the 1-s segments of 2022-2025
    assert device_of("audio/12345.wav") == ""  # DCASE 2025's evaluation names carry no device
    names = pd.read_csv(root / "evaluation_setup/fold1_test.csv", sep="\t")["filename"]
    pd.DataFrame({"filename": names, "device_id": "x"}).to_csv(
        root / "evaluation_setup/with_ids.csv", sep="\t", index=False
    )
    assert set(read_file_list(root, "evaluation_setup/with_ids.csv", need_labels=False)["device"]) == {"x"}
