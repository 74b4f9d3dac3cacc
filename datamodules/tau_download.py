"""Downloading the TAU Urban Acoustic Scenes releases and the DCASE 2024 Task 1 training subsets.

The archive names, URLs and MD5 checksums come from ``soundata`` (its ``tau2020uas_mobile`` and
``tau2022uas_mobile`` loaders; ``pip install -e ".[data]"``), never typed here. Every archive is
downloaded into ``<root>/.downloads/`` (resuming a ``.part`` file with an HTTP range request), checked
against its MD5 before anything is extracted, extracted into a staging folder next to ``root`` and only
then moved into place, with the archive's top-level folder stripped: ``root`` ends up in exactly the
layout :class:`datamodules.TAUScenesDataModule` reads (``meta.csv``, ``audio/``, ``evaluation_setup/``).
A marker per archive (``.downloads/<archive>.done``) makes a second run skip what is complete; the
archive itself is deleted once extracted unless ``keep_archives``.

The DCASE 2024 Task 1 subsets (``split5.csv`` ... ``split100.csv`` and ``test.csv``, from the task
baseline's release page) have no published checksum: they are checked by content instead (a
tab-separated list with a ``filename`` column) and land in ``<root>/split_setup/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

__all__ = [
    "Remote",
    "DatasetSpec",
    "DownloadError",
    "dataset_specs",
    "download",
    "remote_size",
    "with_mirror",
    "SPLIT_URL",
]

log = logging.getLogger(__name__)

#: where the DCASE 2024 Task 1 baseline publishes the training subsets and the test split
SPLIT_URL = "https://github.com/CPJKU/dcase2024_task1_baseline/releases/download/files/"
SPLIT_FILES = ("split5.csv", "split10.csv", "split25.csv", "split50.csv", "split100.csv", "test.csv")


class DownloadError(RuntimeError):
    """A download that failed, or an archive whose checksum is wrong; the message names the archive."""


@dataclass(frozen=True)
class Remote:
    """One file of a data set: its name, URL and MD5 (``None``: no published checksum)."""

    filename: str
    url: str
    md5: str | None
    #: archives are extracted into the root; other files are copied into ``destination``
    destination: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """A named data set: what it is and the files that make it (``source()``: read on first use, so
    that listing the names needs no optional dependency)."""

    name: str
    description: str
    source: Callable[[], tuple[Remote, ...]]

    @property
    def remotes(self) -> tuple[Remote, ...]:
        return self.source()


def _soundata_remotes(module: str, prefix: str) -> tuple[Remote, ...]:
    try:
        loader = __import__(f"soundata.datasets.{module}", fromlist=["REMOTES"])
    except ImportError as error:
        raise ImportError(
            f"the TAU archive list (URLs, MD5 checksums) comes from soundata's {module} loader: "
            "pip install -e '.[data]'"
        ) from error
    remotes = [r for key, r in loader.REMOTES.items() if key.startswith(prefix)]
    return tuple(Remote(r.filename, r.url, r.checksum) for r in remotes)


def dataset_specs() -> dict[str, DatasetSpec]:
    """The data sets ``download`` knows, by name (the TAU ones need soundata)."""
    tau = {
        "tau2020-mobile-dev": (
            "tau2020uas_mobile",
            "development.",
            "TAU Urban Acoustic Scenes 2020 Mobile, development (10-s clips, 44.1 kHz; DCASE 2020 Task 1A)",
        ),
        "tau2020-mobile-eval": (
            "tau2020uas_mobile",
            "evaluation.",
            "TAU Urban Acoustic Scenes 2020 Mobile, evaluation (unlabeled)",
        ),
        "tau2022-mobile-dev": (
            "tau2022uas_mobile",
            "development.",
            "TAU Urban Acoustic Scenes 2022 Mobile, development (1-s clips, 44.1 kHz; DCASE 2022-2025 Task 1)",
        ),
        "tau2022-mobile-eval": (
            "tau2022uas_mobile",
            "evaluation.",
            "TAU Urban Acoustic Scenes 2022-family Mobile evaluation set as soundata lists it (unlabeled)",
        ),
    }
    specs = {
        name: DatasetSpec(name, text, partial(_soundata_remotes, module, prefix))
        for name, (module, prefix, text) in tau.items()
    }
    splits = tuple(Remote(f, SPLIT_URL + f, None, destination="split_setup") for f in SPLIT_FILES)
    specs["dcase2024-task1-splits"] = DatasetSpec(
        "dcase2024-task1-splits",
        "DCASE 2024 Task 1 training subsets split5/10/25/50/100 and the test split (into <root>/split_setup "
        "of tau2022-mobile-dev)",
        lambda: splits,
    )
    return specs


def with_mirror(spec: DatasetSpec, mirror: str | None) -> DatasetSpec:
    """``spec`` with the scheme and host of every URL replaced by ``mirror``'s (paths, queries and
    checksums unchanged), e.g. ``https://mirror.example.org`` for an institutional copy."""
    if mirror is None:
        return spec
    base = urlsplit(mirror)
    if not base.scheme or not base.netloc:
        raise ValueError(f"--mirror {mirror!r}: give scheme and host, e.g. https://mirror.example.org")
    prefix = base.path.rstrip("/")

    def moved() -> tuple[Remote, ...]:
        urls = [urlsplit(remote.url) for remote in spec.remotes]
        return tuple(
            replace(remote, url=urlunsplit((base.scheme, base.netloc, prefix + url.path, url.query, "")))
            for remote, url in zip(spec.remotes, urls)
        )

    return replace(spec, source=moved)


def remote_size(remote: Remote) -> int | None:
    """The file's size in bytes by an HTTP HEAD request (``None`` when the server does not say)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(remote.url, method="HEAD"), timeout=30) as response:
            length = response.headers.get("Content-Length")
    except urllib.error.URLError as error:
        raise DownloadError(
            f"{remote.filename}: cannot reach {remote.url}: {getattr(error, 'reason', error)}"
        ) from error
    return int(length) if length is not None else None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(remote: Remote, target: Path, progress: Callable[[str, int, int | None], None] | None) -> None:
    """Downloads ``remote`` to ``target``, resuming ``target.part`` when the server honours ranges."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(remote.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to fetch: the part is complete
            part.rename(target)
            return
        raise DownloadError(f"{remote.filename}: {remote.url} answered HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise DownloadError(f"{remote.filename}: cannot reach {remote.url}: {error.reason}") from error
    with response:
        resumed = have and response.status == 206
        if have and not resumed:
            log.info("%s: the server ignored the range request; downloading from the start", remote.filename)
        length = response.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length is not None else None
        done = have if resumed else 0
        with part.open("ab" if resumed else "wb") as file:
            try:
                for block in iter(lambda: response.read(1 << 20), b""):
                    file.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(remote.filename, done, total)
            except (http.client.IncompleteRead, OSError) as error:
                if isinstance(error, http.client.IncompleteRead):
                    file.write(error.partial)
                    done += len(error.partial)
                raise DownloadError(
                    f"{remote.filename}: connection lost after {done} of {total} bytes; run again to resume"
                ) from error
    if total is not None and done != total:
        raise DownloadError(f"{remote.filename}: connection lost after {done} of {total} bytes; run again to resume")
    part.rename(target)


def _verify(remote: Remote, path: Path) -> None:
    if remote.md5 is not None:
        actual = _md5(path)
        if actual != remote.md5:
            path.unlink()
            raise DownloadError(
                f"{remote.filename}: MD5 {actual} does not match the published {remote.md5}; the file was deleted "
                f"(from {remote.url}); run again to download it anew, or check the mirror"
            )
    elif remote.filename.endswith(".csv"):
        try:
            table = pd.read_csv(path, sep="\t", nrows=5)
        except (ValueError, UnicodeDecodeError) as error:
            path.unlink()
            raise DownloadError(f"{remote.filename}: not a tab-separated file list ({error}); deleted") from error
        if "filename" not in table.columns:
            path.unlink()
            raise DownloadError(f"{remote.filename}: no 'filename' column (got {list(table.columns)}); deleted")


def _top_folder(names: list[str]) -> str:
    """The archive's single top-level folder (``""`` when it has none)."""
    tops = {name.split("/", 1)[0] for name in names}
    return f"{tops.pop()}/" if len(tops) == 1 and all("/" in n for n in names) else ""


def _extract(archive: Path, root: Path) -> None:
    """Extracts ``archive`` into a staging folder beside ``root``, then moves its files into ``root``
    (the archive's top-level folder stripped, folders merged)."""
    staging = root.parent / f".{root.name}.extracting-{archive.stem}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zipped:
            broken = zipped.testzip()
            if broken is not None:
                raise DownloadError(f"{archive.name}: member {broken} is corrupt; delete the archive and run again")
            zipped.extractall(staging)
            top = _top_folder([n for n in zipped.namelist() if not n.endswith("/")])
    except zipfile.BadZipFile as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{archive.name}: not a zip archive ({error})") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    source = staging / top if top else staging
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = root / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
    shutil.rmtree(staging)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One downloader per root at a time (DDP ranks, two shells): the others wait, then find it done."""
    (root / ".downloads").mkdir(parents=True, exist_ok=True)
    with (root / ".downloads" / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def download(
    spec: DatasetSpec,
    root: str | Path,
    progress: Callable[[str, int, int | None], None] | None = None,
    keep_archives: bool = False,
) -> Path:
    """Fetches, checks and extracts every file of ``spec`` into ``root`` (see the module docstring);
    returns ``root``.

    Raises:
        DownloadError: a file cannot be fetched (HTTP error, unreachable host) or fails its check; the
            message names it. Files completed before the error stay done; a rerun resumes.
    """
    root = Path(root)
    remotes = spec.remotes  # before any folder is made: a missing soundata fails here
    with _locked(root):
        downloads = root / ".downloads"
        for remote in remotes:
            done = downloads / f"{remote.filename}.done"
            if done.exists():
                continue
            target = downloads / remote.filename
            if not target.exists():
                _fetch(remote, target, progress)
            _verify(remote, target)
            if remote.filename.endswith(".zip"):
                _extract(target, root)
                if not keep_archives:
                    target.unlink()
            else:
                destination = root / remote.destination / remote.filename
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(target, destination)
            done.touch()
            log.info("%s: done", remote.filename)
    return root
