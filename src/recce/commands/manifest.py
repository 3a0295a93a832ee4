"""`recce manifest`: merge shard manifests into one, summarise a manifest, add face landmarks to one, pack its
crops into tar shards."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from recce.data import manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    merge = actions.add_parser("merge", help="merge manifests into OUT, rebasing crop paths onto OUT's folder")
    merge.add_argument("out", help="merged manifest to write (.parquet)")
    merge.add_argument("inputs", nargs="+", metavar="IN", help="manifests to merge")
    info = actions.add_parser("info", help="rows, videos and crops by dataset, split, label and method")
    info.add_argument("manifest", help="manifest to describe")
    pack = actions.add_parser(
        "pack",
        help="copy a manifest's crops into WebDataset-style tar shards in OUT_DIR, with a manifest of the same name "
        "there pointing into them (no re-extraction; the bytes, hence the pixels, are the files')",
    )
    pack.add_argument("manifest", help="manifest whose crops to pack")
    pack.add_argument("out_dir", help="folder for the shards (shards/*.tar) and the new manifest")
    pack.add_argument("--pack-size", type=float, default=None, metavar="MB", help="close a shard at this size (1024)")
    pack.add_argument(
        "--group-by-video", action="store_true", help="put each video's crops together (default: manifest order)"
    )
    pack.add_argument("--no-progress", action="store_true", help="no progress bar")
    marks = actions.add_parser(
        "landmarks",
        help="add five face landmarks per crop (for face-mask detectors such as Add-Net) by running the face "
        "detector on the crops; rows that have them are kept unless --redo",
    )
    marks.add_argument("manifest", help="manifest to complete (rewritten in place unless --out)")
    marks.add_argument("--out", help="write the completed manifest here instead (in the same folder)")
    marks.add_argument(
        "--face-detector",
        default="auto",
        help="auto (RetinaFace when weights are given, else Haar, whose landmarks are approximated from its box), "
        "retinaface, retinaface-mobilenet0.25, retinaface-resnet50 or haar",
    )
    marks.add_argument("--weights", help="RetinaFace weights (or set RECCE_RETINAFACE_WEIGHTS)")
    marks.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    marks.add_argument("--min-score", type=float, default=0.6, help="ignore faces scoring lower (default 0.6)")
    marks.add_argument(
        "--scale",
        type=float,
        default=1.3,
        help="crop side / face side the crops were cut with, to place the points where no face is found (1.3)",
    )
    marks.add_argument("--batch-size", type=int, default=16, help="crops per face-detector call (default 16)")
    marks.add_argument("--redo", action="store_true", help="recompute the landmarks of every row")
    marks.add_argument("--no-progress", action="store_true", help="no progress bar")


SUMMARY_COLUMNS = ("dataset", "split", "label", "method", "video")


def describe(frame: pd.DataFrame) -> pd.DataFrame:
    """Crops and videos per dataset, split, label and method (group-bys over Arrow strings, no per-row objects)."""
    grouped = frame.groupby(["dataset", "split", "label", "method"], observed=True, sort=True)
    return grouped.agg(crops=("video", "size"), videos=("video", "nunique")).reset_index()


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "landmarks":
            return _landmarks(args)
        if args.action == "pack":
            return _pack(args)
        if args.action == "merge":
            merged = manifest.merge(args.inputs, args.out)
            print(f"{args.out}: {len(merged)} crops from {len(args.inputs)} manifests")
            return 0
        frame = manifest.read(args.manifest, columns=[*SUMMARY_COLUMNS, manifest.LANDMARKS_SOURCE, "shard"])
    except manifest.ManifestError as error:
        print(f"recce manifest: {error}", file=sys.stderr)
        return 2
    videos = frame.groupby("dataset", observed=True)["video"].nunique().sum()
    print(f"{args.manifest}: {len(frame)} crops from {videos} videos")
    if len(frame):
        print(describe(frame).to_string(index=False))
    print(f"face landmarks: {landmark_counts(frame)}")
    if "shard" in frame.columns:
        packed = frame["shard"].notna()
        print(
            f"storage: {int(packed.sum())} crops in {frame['shard'].nunique()} tar shards, {int((~packed).sum())} files"
        )
    return 0


def landmark_counts(frame: pd.DataFrame) -> str:
    """How many crops have landmarks, by source (detected, box, crop), and how many have none (no source)."""
    if manifest.LANDMARKS_SOURCE not in frame.columns:
        return f"none ({len(frame)} crops; add them with `recce manifest landmarks`)"
    sources = frame[manifest.LANDMARKS_SOURCE]
    counts = [f"{count} {source}" for source, count in sources[sources != ""].value_counts().sort_index().items()]
    return ", ".join([*counts, f"{int((sources == '').sum())} without"])


def _landmarks(args: argparse.Namespace) -> int:
    from recce.data.faces import build_detector
    from recce.data.landmarks import add_landmarks

    try:
        detector = build_detector(
            args.face_detector,
            weights=args.weights,
            device=args.device,
            score_threshold=args.min_score,
            batch_size=args.batch_size,
        )
        summary = add_landmarks(
            args.manifest,
            detector,
            out=args.out,
            scale=args.scale,
            redo=args.redo,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except (ValueError, OSError) as error:  # ManifestError is a ValueError
        print(f"recce manifest: {error}", file=sys.stderr)
        return 2
    found = ", ".join(f"{count} {source}" for source, count in sorted(summary.sources.items())) or "none"
    print(f"{summary.manifest}: {summary.rows} crops, {summary.todo} needed landmarks ({detector.name}): {found}")
    print('  sources: "detected" by the face detector, "box" placed in its box (Haar), "crop" no face found')
    if summary.failures:
        print(f"  {len(summary.failures)} crops could not be read and still have none, e.g. {summary.failures[0][0]}")
        return 1
    return 0


def _pack(args: argparse.Namespace) -> int:
    from recce.data.packed import DEFAULT_PACK_MB, pack_manifest
    from recce.locks import LockHeld

    try:
        summary = pack_manifest(
            args.manifest,
            args.out_dir,
            limit=round((DEFAULT_PACK_MB if args.pack_size is None else args.pack_size) * 2**20),
            group_videos=args.group_by_video,
            progress=not args.no_progress,
        )
    except (ValueError, OSError, LockHeld) as error:  # ManifestError and PackError are ValueErrors
        print(f"recce manifest: {error}", file=sys.stderr)
        return 2
    print(f"{summary.manifest}: {summary.rows} crops in {summary.shards} shards ({summary.bytes / 2**20:.1f} MiB)")
    if summary.failures:
        print(f"  {len(summary.failures)} crops could not be read and were left out: see {summary.failures_file}")
        return 1
    return 0
