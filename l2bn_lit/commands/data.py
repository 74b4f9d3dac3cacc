"""Getting and checking the DCASE data: ``l2bn data`` (or ``l2bn data``).

    l2bn data list [--sizes] [--mirror URL]
    l2bn data download DATASET --root DIR [--mirror URL] [--keep-archives]
    l2bn data check --root DIR [--lists evaluation_setup/fold1_train.csv ...]
        [--sample-rate 44100 --channels 1 --labels ...]

``download`` (:mod:`datamodules.tau_download`) resumes interrupted files, checks every archive's MD5
before extracting it and leaves ``DIR`` in the layout the TAU datamodule reads. ``check``
(:mod:`datamodules.tau_check`) reports missing, unreadable, truncated and duplicate files, clips at
another sample rate or channel count and labels outside the scene labels (``--sample-rate``,
``--channels``, ``--labels``: TAU Mobile's 44.1 kHz, mono and ten scenes by default), and the clips per
scene and device of each list, and exits with status 1 on any problem.
"""

from __future__ import annotations

import argparse
import sys

from datamodules.tau_check import TAU_MOBILE, AudioSpec, check_lists
from datamodules.tau_download import DownloadError, dataset_specs, download, remote_size, with_mirror

__all__ = ["main"]


def _list(args: argparse.Namespace) -> int:
    for spec in dataset_specs().values():
        try:
            spec = with_mirror(spec, args.mirror)
            remotes = spec.remotes
            files = f"{len(remotes):3d} files, {sum(r.md5 is not None for r in remotes):2d} with MD5"
            if args.sizes:
                sizes = [remote_size(r) for r in remotes]
                files += f", {sum(s or 0 for s in sizes) / 2**30:6.2f} GiB" + (
                    "" if all(s is not None for s in sizes) else "+"
                )
        except (ImportError, DownloadError) as error:
            files = f"({error})"
        print(f"{spec.name:22s} {files}  {spec.description}")
    return 0


def _progress(name: str, done: int, total: int | None) -> None:
    of = f" / {total / 2**20:,.0f}" if total else ""
    print(f"\r{name}: {done / 2**20:,.0f}{of} MiB", end="", file=sys.stderr, flush=True)


def _download(args: argparse.Namespace) -> int:
    specs = dataset_specs()
    if args.dataset not in specs:
        raise SystemExit(f"unknown DATASET {args.dataset!r}; choose one of {', '.join(specs)} (l2bn data list)")
    spec = with_mirror(specs[args.dataset], args.mirror)
    try:
        root = download(spec, args.root, progress=None if args.quiet else _progress, keep_archives=args.keep_archives)
    except (DownloadError, ImportError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    print(f"\n{spec.name}: complete in {root}")
    return 0


def _check(args: argparse.Namespace) -> int:
    spec = AudioSpec(args.sample_rate, args.channels, tuple(args.labels))
    reports = check_lists(args.root, args.lists, spec)
    if not reports:
        print(f"no file lists under {args.root}/evaluation_setup or {args.root}/split_setup; name them with --lists")
        return 1
    for report in reports:
        status = "ok" if report.ok else "PROBLEMS"
        print(f"== {report.list_path}: {report.rows} rows, {status}")
        if report.error:
            print(f"   error: {report.error}")
        for label, items in (
            ("missing", report.missing),
            ("unreadable", report.unreadable),
            ("duplicate", report.duplicates),
        ):
            _print_items(label, items, args.show)
        truncated = [
            f"{name} (header: {declared} frames, file holds {present})" for name, declared, present in report.truncated
        ]
        rates = [f"{name} ({rate} Hz, not {spec.sample_rate})" for name, rate in report.other_rates]
        channels = [f"{name} ({count} channels, not {spec.channels})" for name, count in report.other_channels]
        labels = [
            f"{label!r} ({rows} rows, e.g. {name}): not one of --labels" for label, rows, name in report.unknown_labels
        ]
        for label, items in (
            ("truncated", truncated),
            ("sample rate", rates),
            ("channels", channels),
            ("label", labels),
        ):
            _print_items(label, items, args.show)
        if report.counts is not None and not report.counts.empty:
            print(report.counts.to_markdown())
    return 0 if all(r.ok for r in reports) else 1


def _print_items(label: str, items: list[str], show: int) -> None:
    for item in items[:show]:
        print(f"   {label}: {item}")
    if len(items) > show:
        print(f"   ... {len(items) - show} more ({label})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="l2bn data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the data sets download knows")
    listing.add_argument("--sizes", action="store_true", help="ask the server for each file's size (HTTP HEAD)")
    listing.add_argument("--mirror", help="as for download")
    fetch = commands.add_parser("download", help="download, check and extract a data set")
    fetch.add_argument("dataset")
    fetch.add_argument("--root", required=True, help="the data set's folder (created; the datamodule's root)")
    fetch.add_argument("--mirror", help="replace scheme and host of every URL (checksums still enforced)")
    fetch.add_argument("--keep-archives", action="store_true", help="keep the archives after extraction")
    fetch.add_argument("--quiet", action="store_true", help="no progress output")
    check = commands.add_parser("check", help="report missing, unreadable, truncated and duplicate files")
    check.add_argument("--root", required=True)
    check.add_argument(
        "--lists",
        nargs="+",
        help="file lists relative to root (default: every csv in evaluation_setup/ and split_setup/)",
    )
    check.add_argument("--show", type=int, default=10, help="problems shown per kind and list")
    check.add_argument(
        "--sample-rate",
        type=int,
        default=TAU_MOBILE.sample_rate,
        help="every clip's sample rate (Hz; TAU Mobile: 44100)",
    )
    check.add_argument(
        "--channels", type=int, default=TAU_MOBILE.channels, help="every clip's channel count (TAU Mobile: 1)"
    )
    check.add_argument(
        "--labels",
        nargs="+",
        default=list(TAU_MOBILE.scene_labels),
        help="the scene labels (default: the ten TAU scenes)",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list(args)
    return _download(args) if args.command == "download" else _check(args)


if __name__ == "__main__":
    from l2bn_lit.errors import run_main

    sys.exit(run_main(main))
