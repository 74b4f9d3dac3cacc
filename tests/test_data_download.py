"""``l2bn data``: download (resume, checksums, mirror), list and check, against a local
HTTP server on 127.0.0.1 serving small archives built in the TAU release structure."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from datamodules import TAUScenesDataModule, write_synthetic_tau
from datamodules.tau_check import TAU_SCENES, AudioSpec, check_lists, wav_frames
from datamodules.tau_download import DatasetSpec, DownloadError, Remote, download, with_mirror
from l2bn_lit.commands.data import main as data_main

TOP = "TAU-urban-acoustic-scenes-2022-mobile-development"


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) with Range support; ``cut`` (path -> bytes) makes the first
    response for that path stop after that many bytes while promising the whole file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        ranged = self.headers.get("Range")
        self.server.requests.append((path, ranged))
        data = self.server.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start = int(ranged.removeprefix("bytes=").rstrip("-")) if ranged else 0
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
            return
        cut = self.server.cut.pop(path, None)
        self.wfile.write(data[start:cut] if cut is not None else data[start:])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True


@pytest.fixture
def server():
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _zip(files: dict[str, Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, path in files.items():
            archive.write(path, name)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A small data set in the TAU layout and its release archives (two audio parts and the metadata),
    each with the release's top-level folder, as the real zip files are."""
    source = write_synthetic_tau(tmp_path_factory.mktemp("release") / TOP, clips_per_scene=4, sample_rate=8000)
    audio = sorted(p for p in (source / "audio").iterdir())
    half = len(audio) // 2
    member = lambda p: f"{TOP}/{p.relative_to(source).as_posix()}"  # noqa: E731
    meta = [source / "meta.csv", *sorted((source / "evaluation_setup").iterdir())]
    archives = {
        f"{TOP}.audio.1.zip": _zip({member(p): p for p in audio[:half]}),
        f"{TOP}.audio.2.zip": _zip({member(p): p for p in audio[half:]}),
        f"{TOP}.meta.zip": _zip({member(p): p for p in meta}),
    }
    return source, archives


def _spec(server: _Server, archives: dict[str, bytes], md5: dict[str, str] | None = None) -> DatasetSpec:
    host = f"http://127.0.0.1:{server.server_address[1]}"
    for name, data in archives.items():
        server.files[f"/record/1/files/{name}"] = data
    remotes = tuple(
        Remote(name, f"{host}/record/1/files/{name}?download=1", (md5 or {}).get(name, hashlib.md5(data).hexdigest()))
        for name, data in archives.items()
    )
    return DatasetSpec("tiny", "test release", lambda: remotes)


def _same_tree(a: Path, b: Path) -> None:
    def files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and ".downloads" not in p.parts)

    assert files(a) == files(b)
    for name in files(a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_full_download_gives_the_layout_the_datamodule_reads(server, release, tmp_path):
    source, archives = release
    root = download(_spec(server, archives), tmp_path / "tau")
    _same_tree(root, source)  # top-level folder stripped, the three archives merged
    assert not list(root.parent.glob(".*extracting*")) and not list((root / ".downloads").glob("*.zip"))
    data = TAUScenesDataModule(str(root), sample_rate=8000, duration=1.0, batch_size=4)
    data.setup("fit")
    assert data.num_classes == 5 and len(data.train_set) + len(data.val_set) == len(data.train_table)
    # a second run downloads nothing
    before = len(server.requests)
    download(_spec(server, archives), root)
    assert len(server.requests) == before


def test_interrupted_download_resumes_with_a_range_request(server, release, tmp_path):
    source, archives = release
    name = f"{TOP}.audio.1.zip"
    cut = len(archives[name]) // 3
    server.cut[f"/record/1/files/{name}"] = cut
    spec = _spec(server, archives)
    with pytest.raises(DownloadError, match=rf"{name}: connection lost after {cut} of {len(archives[name])} bytes"):
        download(spec, tmp_path / "tau")
    assert (tmp_path / "tau" / ".downloads" / f"{name}.part").stat().st_size == cut
    download(spec, tmp_path / "tau")
    assert (f"/record/1/files/{name}", f"bytes={cut}-") in server.requests
    _same_tree(tmp_path / "tau", source)


def test_corrupt_archive_is_an_error_naming_it_and_nothing_is_extracted(server, release, tmp_path):
    _, archives = release
    name = f"{TOP}.audio.2.zip"
    spec = _spec(server, archives, md5={name: "0" * 32})
    with pytest.raises(DownloadError, match=rf"{name}: MD5 [0-9a-f]{{32}} does not match the published 0{{32}}"):
        download(spec, tmp_path / "tau")
    root = tmp_path / "tau"
    extracted = {p.name for p in (root / "audio").iterdir()}
    in_archive = {Path(n).name for n in zipfile.ZipFile(io.BytesIO(archives[name])).namelist()}
    assert extracted and not extracted & in_archive  # the first archive is in, nothing of the bad one
    assert not (root / ".downloads" / name).exists() and not list(tmp_path.glob(".*extracting*"))


def test_missing_archive_is_an_error_naming_it(server, release, tmp_path):
    _, archives = release
    spec = _spec(server, archives)
    del server.files[f"/record/1/files/{TOP}.meta.zip"]
    with pytest.raises(
        DownloadError, match=rf"{TOP}.meta.zip: http://127.0.0.1:\d+/record/1/files/.* answered HTTP 404"
    ):
        download(spec, tmp_path / "tau")


def test_mirror_replaces_the_host_and_keeps_the_checksums(server, release, tmp_path):
    source, archives = release
    spec = _spec(server, archives)
    original = DatasetSpec(
        "tiny",
        "",
        lambda: tuple(r.__class__(r.filename, r.url.replace("127.0.0.1", "zenodo.org"), r.md5) for r in spec.remotes),
    )
    mirrored = with_mirror(original, f"http://127.0.0.1:{server.server_address[1]}")
    assert [r.url for r in mirrored.remotes] == [r.url for r in spec.remotes]
    assert [r.md5 for r in mirrored.remotes] == [r.md5 for r in spec.remotes]
    download(mirrored, tmp_path / "tau")
    _same_tree(tmp_path / "tau", source)
    with pytest.raises(ValueError, match="--mirror"):
        with_mirror(spec, "mirror.example.org")


def test_split_lists_without_checksum_are_checked_by_content(server, tmp_path):
    host = f"http://127.0.0.1:{server.server_address[1]}"
    server.files["/files/split5.csv"] = b"filename\tscene_label\naudio/a-x-1-0-a.wav\tairport\n"
    server.files["/files/test.csv"] = b"<html>not found</html>"
    ok = DatasetSpec("s", "", lambda: (Remote("split5.csv", f"{host}/files/split5.csv", None, "split_setup"),))
    download(ok, tmp_path / "tau")
    assert (tmp_path / "tau" / "split_setup" / "split5.csv").read_bytes() == server.files["/files/split5.csv"]
    bad = DatasetSpec("s", "", lambda: (Remote("test.csv", f"{host}/files/test.csv", None, "split_setup"),))
    with pytest.raises(DownloadError, match="test.csv: no 'filename' column"):
        download(bad, tmp_path / "tau")


# --- check -----------------------------------------------------------------------------------------


def _truncate(path: Path, keep_bytes: int) -> None:
    path.write_bytes(path.read_bytes()[:keep_bytes])


def test_wav_frames_reads_the_header_against_the_file(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(1000, dtype=np.float32), 8000, subtype="PCM_24")
    assert wav_frames(path) == (1000, 1000)
    _truncate(path, path.stat().st_size - 3 * 100 - 1)  # 100 frames and one byte of another gone
    assert wav_frames(path) == (1000, 899)
    (tmp_path / "y.flac").write_bytes(b"fLaC....")
    assert wav_frames(tmp_path / "y.flac") is None


def test_check_reports_every_problem_and_exits_non_zero(root, capsys):
    assert data_main(["check", "--root", str(root), "--sample-rate", "16000"]) == 0
    capsys.readouterr()
    table = pd.read_csv(root / "evaluation_setup" / "fold1_train.csv", sep="\t")
    files = table["filename"].tolist()
    (root / files[0]).unlink()
    (root / files[1]).write_bytes(b"not audio")
    _truncate(root / files[2], (root / files[2]).stat().st_size - 500)
    pd.concat([table, table.iloc[[3]]]).to_csv(root / "evaluation_setup" / "fold1_train.csv", sep="\t", index=False)
    assert data_main(["check", "--root", str(root), "--sample-rate", "16000"]) == 1
    out = capsys.readouterr().out
    assert f"missing: {files[0]}" in out and f"unreadable: {files[1]}" in out
    assert f"truncated: {files[2]} (header: 16000 frames, file holds 15750)" in out
    assert f"duplicate: {files[3]}" in out
    reports = {r.list_path: r for r in check_lists(root, spec=AudioSpec(16000, 1, TAU_SCENES))}
    train = reports["evaluation_setup/fold1_train.csv"]
    assert not train.ok and reports["evaluation_setup/fold1_evaluate.csv"].ok
    assert train.counts.to_numpy().sum() == len(table) + 1  # clips per scene x device, as listed


def test_datamodule_names_a_truncated_clip_even_when_padding(root):
    table = pd.read_csv(root / "evaluation_setup" / "fold1_train.csv", sep="\t")
    _truncate(root / table["filename"][5], 44 + 2 * 8000)  # header + half of the 16,000 frames
    for short_clips in ("error", "pad"):
        data = TAUScenesDataModule(str(root), sample_rate=16000, duration=1.0, short_clips=short_clips)
        with pytest.raises(ValueError, match=rf"truncated.*{table['filename'][5]}.*16000 frames.*8000"):
            data.setup("fit")


def test_datamodule_download_option_fetches_into_an_empty_root(server, release, tmp_path, monkeypatch):
    source, archives = release
    spec = _spec(server, archives)
    monkeypatch.setattr("datamodules.dcase.dataset_specs", lambda: {"tiny": spec})
    data = TAUScenesDataModule(str(tmp_path / "tau"), sample_rate=8000, duration=1.0, download="tiny")
    _same_tree(tmp_path / "tau", source)
    assert data.num_classes == 5
    with pytest.raises(ValueError, match="download: unknown data set 'tau2099'"):
        TAUScenesDataModule(str(tmp_path / "other"), download=["tau2099"])


def test_check_reports_clips_off_the_spec_and_labels_outside_the_label_set(root, capsys):
    """Sample rate and channels against the spec, labels against the label set: each named, exit 1."""
    table = pd.read_csv(root / "evaluation_setup" / "fold1_train.csv", sep="\t")
    files = table["filename"].tolist()
    tone = np.sin(np.arange(22050) / 10).astype(np.float32)
    sf.write(root / files[0], tone, 22050)  # 1 s at 22.05 kHz
    sf.write(root / files[1], np.stack([tone[:16000], tone[:16000]], axis=1), 16000)  # stereo
    table.loc[[2, 3], "scene_label"] = "airprot"  # a typo, twice
    table.to_csv(root / "evaluation_setup" / "fold1_train.csv", sep="\t", index=False)
    assert data_main(["check", "--root", str(root), "--sample-rate", "16000"]) == 1
    out = capsys.readouterr().out
    assert f"sample rate: {files[0]} (22050 Hz, not 16000)" in out
    assert f"channels: {files[1]} (2 channels, not 1)" in out
    assert f"label: 'airprot' (2 rows, e.g. {files[2]}): not one of --labels" in out
    report = {r.list_path: r for r in check_lists(root, spec=AudioSpec(16000, 1, TAU_SCENES))}[
        "evaluation_setup/fold1_train.csv"
    ]
    assert report.other_rates == [(files[0], 22050)] and report.other_channels == [(files[1], 2)]
    assert report.unknown_labels == [("airprot", 2, files[2])]
    # the same folder against TAU's own spec (44.1 kHz): every clip of the 16 kHz synthetic set is off it
    assert data_main(["check", "--root", str(root)]) == 1
    assert "(16000 Hz, not 44100)" in capsys.readouterr().out
