"""`recce extract`: detect and crop faces of a dataset's videos into a manifest, resumably and in parallel."""

from __future__ import annotations

import argparse
import logging
import sys

from recce.commands import add_face_detector_argument
from recce.data.indexers import INDEXERS

logger = logging.getLogger("recce")
# Distributed as already-cropped face sequences, which the official loaders read frame by frame: every frame by default.
FACE_SEQUENCE_DATASETS = ("wilddeepfake",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=sorted(INDEXERS), help="dataset layout to index")
    parser.add_argument("--root", required=True, help="dataset root folder")
    parser.add_argument("--out", required=True, help="output folder (crops, parts, manifest.parquet)")

    options = parser.add_argument_group("dataset options (each applies to the datasets named)")
    options.add_argument("--splits", dest="splits_dir", help="ffpp: folder with train/val/test.json")
    options.add_argument(
        "--compression", dest="compressions", action="append", help="ffpp: raw, c23 or c40 (repeatable)"
    )
    options.add_argument("--methods", nargs="+", help="ffpp: manipulation methods to include")
    options.add_argument(
        "--allow-missing",
        action="store_true",
        default=None,
        help="ffpp, celebdf, dfdc, dfdcp: skip listed files that are missing",
    )
    options.add_argument(
        "--val-fraction", type=float, help="celebdf, dfdcp, wilddeepfake, folder: share of train moved to val"
    )
    options.add_argument("--test-fraction", type=float, help="folder: share of items drawn for test")
    options.add_argument("--val-parts", nargs="+", help="dfdc: training parts used as val")
    options.add_argument("--extract-to", help="wilddeepfake: where archives are unpacked")
    options.add_argument(
        "--archive-max-bytes",
        type=byte_size,
        help="wilddeepfake: refuse an archive whose files total more (e.g. 64G, the default)",
    )
    options.add_argument(
        "--archive-max-members", type=int, help="wilddeepfake: refuse an archive with more members (default 500000)"
    )
    options.add_argument(
        "--archive-max-expansion",
        type=float,
        help="wilddeepfake: refuse an archive whose files total more than this times its size (default 100)",
    )

    sampling = parser.add_argument_group("frames").add_mutually_exclusive_group()
    sampling.add_argument(
        "--frames",
        type=int,
        help="frames per video, evenly spaced (default 32; every frame for face-sequence datasets: wilddeepfake)",
    )
    sampling.add_argument("--every", type=int, help="every K-th frame instead")
    sampling.add_argument("--all-frames", action="store_true", help="every frame instead")

    faces = parser.add_argument_group("faces")
    add_face_detector_argument(
        faces,
        "auto (RetinaFace when weights are given, else Haar), retinaface, retinaface-mobilenet0.25, "
        "retinaface-resnet50, haar, or none: the whole image is the crop, stored unresized "
        "(already-cropped faces such as WildDeepfake's)",
    )
    faces.add_argument("--weights", help="RetinaFace weights (or set RECCE_RETINAFACE_WEIGHTS)")
    faces.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    faces.add_argument("--choose", choices=["score", "largest"], default="score", help="face kept per frame")
    faces.add_argument("--min-score", type=float, default=0.6, help="ignore faces scoring lower (default 0.6)")
    faces.add_argument("--scale", type=float, default=1.3, help="crop side / face box side (default 1.3)")
    faces.add_argument("--size", type=int, default=299, help="crop size in pixels (default 299)")
    faces.add_argument("--edge", choices=["clip", "pad"], default="clip", help="crops crossing the frame edge")
    faces.add_argument("--batch-size", type=int, default=16, help="frames per detector call (default 16)")

    output = parser.add_argument_group("output and execution")
    output.add_argument("--format", dest="image_format", choices=["png", "jpg"], default="png")
    output.add_argument("--jpeg-quality", type=int, default=95)
    output.add_argument(
        "--pack",
        action="store_true",
        help="write the crops into tar shards (shards/*.tar, WebDataset-style, members named as the crop files) "
        "that the manifest points into, instead of one file per crop; training and evaluation read either",
    )
    output.add_argument(
        "--pack-size",
        type=float,
        default=None,
        metavar="MB",
        help="with --pack: close a shard at this size (default 1024) or at 256 videos, whichever comes first",
    )
    output.add_argument("--workers", type=int, default=0, help="worker processes; 0 = in this process")
    output.add_argument(
        "--shard", help="K/N with K counted from 1 (1/4 ... 4/4): videos K, K+N, K+2N, ... of the sorted list"
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images and video frames larger than this, before decoding (default 7680*4320, 8K)",
    )


def byte_size(text: str) -> int:
    """'64G', '500M', '1.5T' or a plain number of bytes."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    number, unit = text.strip().upper().removesuffix("B"), ""
    if number[-1:] in units:
        number, unit = number[:-1], number[-1]
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 64G, 500M or 1000000") from None


ARCHIVE_LIMITS = {
    "archive_max_bytes": "max_bytes",
    "archive_max_members": "max_members",
    "archive_max_expansion": "max_expansion",
}


INDEX_OPTIONS = (
    "splits_dir",
    "compressions",
    "methods",
    "allow_missing",
    "val_fraction",
    "test_fraction",
    "val_parts",
    "extract_to",
)


def index_options(args: argparse.Namespace) -> dict[str, object]:
    """The indexer's keyword options the user gave; the archive limits travel as one `ArchiveLimits`."""
    options = {name: getattr(args, name) for name in INDEX_OPTIONS if getattr(args, name) is not None}
    limits = {field: getattr(args, option) for option, field in ARCHIVE_LIMITS.items()}
    if any(value is not None for value in limits.values()):
        from recce.data.archive import ArchiveLimits

        options["archive_limits"] = ArchiveLimits(**{k: v for k, v in limits.items() if v is not None})
    return options


def run(args: argparse.Namespace) -> int:
    from recce.data.extract import ExtractError, ExtractSettings, extract, output_names, parse_shard
    from recce.data.indexers import DatasetLayoutError
    from recce.data.packed import DEFAULT_PACK_MB
    from recce.locks import LockHeld

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sampling = "all" if args.all_frames else "every" if args.every is not None else "uniform"
    whole_sequences = sampling == "uniform" and args.frames is None and args.dataset in FACE_SEQUENCE_DATASETS
    if whole_sequences:
        sampling = "all"
    try:
        if args.pack_size is not None and not args.pack:
            raise ExtractError("--pack-size needs --pack")
        pack_size = (
            round((DEFAULT_PACK_MB if args.pack_size is None else args.pack_size) * 2**20) if args.pack else None
        )
        shard_range = parse_shard(args.shard) if args.shard else None
        settings = ExtractSettings(
            sampling=sampling,
            frames=args.frames or 32,
            every=args.every or 1,
            detector=args.detector,
            weights=args.weights,
            choose=args.choose,
            min_score=args.min_score,
            scale=args.scale,
            size=args.size,
            edge=args.edge,
            image_format=args.image_format,
            jpeg_quality=args.jpeg_quality,
        )
        summary = extract(
            args.dataset,
            args.root,
            args.out,
            settings,
            index_options=index_options(args),
            workers=args.workers,
            device=args.device,
            batch_size=args.batch_size,
            shard=shard_range,
            progress=not args.no_progress,
            pack_size=pack_size,
            **({"max_pixels": args.max_pixels} if args.max_pixels is not None else {}),
        )
    except (ExtractError, DatasetLayoutError, LockHeld, ValueError, OSError) as error:
        print(f"recce extract: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recce extract: interrupted before extraction started", file=sys.stderr)
        return 130
    collected = summary.collected
    shard = f" (shard {args.shard})" if args.shard else ""
    print(f"{summary.dataset}{shard}: {summary.items} items, detector {', '.join(collected.detectors) or '-'}")
    print(
        f"  videos: {summary.done} extracted, {summary.already_done} already done, {summary.failed} failed"
        + (f", {summary.index_skipped} skipped by the indexer" if summary.index_skipped else "")
    )
    print(f"  frames: {summary.frames} sampled, {summary.faces} with a face, {summary.no_face} without")
    if whole_sequences:
        print(f"  every frame of each {args.dataset} sequence, as the official loader (--frames N to sample N)")
    print(f"  manifest: {collected.manifest}: {collected.rows} crops; {collected.no_face} faceless frames")
    if collected.resplit:
        print(
            f"  {collected.resplit} finished item(s) moved to another split (the split options changed; not re-cropped)"
        )
    if summary.failures:
        failures = collected.manifest.parent / output_names(shard_range)["failures"]
        print(f"  failures: {len(summary.failures)} inputs listed with the reason in {failures}")
    if summary.interrupted:
        print("interrupted: the manifest holds the finished items; re-run the same command to resume")
        return 130
    return 0
