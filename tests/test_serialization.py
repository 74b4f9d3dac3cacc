"""Loading checkpoints safely: weights only, one short error per bad file, nothing executed."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from l2bn_lit.serialization import CheckpointError, load_checkpoint

GOOD = {"state_dict": {"w": torch.arange(4.0)}, "hyper_parameters": {"norm": "l2bn"}, "epoch": 3}


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.ckpt"
    torch.save(GOOD, path)
    return path


def test_a_checkpoint_loads_weights_only(good):
    loaded = load_checkpoint(good)
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(4.0)) and loaded["epoch"] == 3


def test_torch_load_defaults_to_weights_only_and_refuses_code(tmp_path):
    """The library behaviour the loader relies on (torch >= 2.6): weights_only refuses a global."""
    path = tmp_path / "evil.ckpt"
    torch.save({"x": _Payload(str(tmp_path / "ran"))}, path)
    with pytest.raises(pickle.UnpicklingError, match="GLOBAL"):
        torch.load(path, weights_only=True)
    assert not (tmp_path / "ran").exists()


def _write(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.ckpt", b"", "empty file"),
        ("junk.ckpt", b"this is not a checkpoint at all", "truncated or corrupt|not a PyTorch checkpoint"),
        (
            "foreign.ckpt",
            {"model": {"w": torch.zeros(1)}},
            r"not a checkpoint of this project \(no state_dict, hyper_parameters",
        ),
        ("plain.pkl", "pickle", "not a PyTorch checkpoint"),
    ],
)
def test_bad_files_are_one_short_error_naming_the_file(tmp_path, good, name, content, message):
    if content == "pickle":
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    else:
        path = _write(tmp_path, name, content)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_truncated_and_missing_files(tmp_path, good):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"^{truncated}: truncated or corrupt"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_a_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = _write(tmp_path, "evil.ckpt", {**GOOD, "extra": _Payload(str(marker))})
    with pytest.raises(CheckpointError, match=r"refused: loading it would run or build (posix|os)\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_init_from_and_evaluate_refuse_a_bad_file_by_name(tmp_path):
    from models import ImageClassifier

    bad = _write(tmp_path, "bad.ckpt", b"\x00" * 64)
    with pytest.raises(CheckpointError, match=rf"^{bad}"):
        ImageClassifier(num_classes=10, input_shape=[1, 8, 8], arch="small_cnn", init_from=str(bad))
    from l2bn_lit.lit.classification_module import ClassificationModule
    from l2bn_lit.lit.loading import load_module

    with pytest.raises(CheckpointError, match=rf"^{bad}"):
        load_module(bad, {}, ClassificationModule)
