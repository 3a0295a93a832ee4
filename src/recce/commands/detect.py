"""`recce detect`: is this image or video a face forgery? Scores per face, per frame and per file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from recce import checkpoints
from recce.commands import add_face_detector_argument
from recce.data.faces import WholeImage, build_detector
from recce.detect import (
    AGGREGATIONS,
    RUNTIMES,
    DetectSettings,
    FileResult,
    MediaScorer,
    checkpoint_warnings,
    media_files,
    run_metadata,
    write_csv,
)
from recce.engine.runtime import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image or video files, or folders of them")
    parser.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint (recce train / convert / demo)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled evenly from each video (default 32)")
    parser.add_argument("--aggregate", choices=sorted(AGGREGATIONS), default="mean", help="file score from frames")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(fake) at or above which a file is FAKE")
    add_face_detector_argument(
        parser, "face detector: auto, haar, retinaface, or none: each image is already a face crop (default auto)"
    )
    parser.add_argument("--weights", help="RetinaFace weights (mobilenet0.25_Final.pth or Resnet50_Final.pth)")
    parser.add_argument("--min-face-score", type=float, default=0.6, help="face detector confidence threshold")
    parser.add_argument("--largest-face-only", action="store_true", help="score only the most confident face")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="on the CPU, run the detector's P(fake) as a frozen TorchScript graph (torchscript: 1.5-3.7x faster but "
        "for MultiAtt) or its ONNX export on ONNX Runtime (onnxruntime: 1.4x for MultiAtt), scores within 1e-6 of "
        "eager torch; each graph costs seconds to build, worth it for many videos (default torch)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads of the detector (default: torch's setting)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print every face, frame and file as JSON")
    output.add_argument("--csv", action="store_true", help="print one CSV row per file")
    parser.add_argument("--save-masks", metavar="DIR", help="write a panel of the detector's maps per face into DIR")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--max-pixels", type=int, help="refuse images and video frames larger than this (default 7680*4320, 8K)"
    )


def run(args: argparse.Namespace) -> int:
    runtime = args.runtime
    if args.save_masks and runtime != "torch":
        note = f"--save-masks draws the maps with eager torch, which then gives the scores too ({runtime} unused)"
        print(f"recce detect: {note}", file=sys.stderr)
        runtime = "torch"
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"threads must be at least 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        model = checkpoints.load(args.checkpoint)
        whole = args.detector == "none"
        faces = (
            WholeImage()
            if whole
            else build_detector(args.detector, args.weights, args.device, score_threshold=args.min_face_score)
        )
        settings = DetectSettings(
            scale=1.0 if whole else DetectSettings.scale,
            frames=args.frames,
            aggregate=args.aggregate,
            all_faces=not args.largest_face_only,
            batch_size=args.batch_size,
            device=args.device,
            runtime=runtime,
            **({"max_pixels": args.max_pixels} if args.max_pixels is not None else {}),
        )
        scorer = MediaScorer(model, faces, settings)
        if scorer.runtime != runtime:
            device = resolve_device(args.device)
            print(f"recce detect: --runtime {runtime} is a CPU runtime: eager torch on {device}", file=sys.stderr)
    except (checkpoints.CheckpointError, ValueError) as error:
        print(f"recce detect: {error}", file=sys.stderr)
        return 2
    for warning in checkpoint_warnings(checkpoints.read_metadata(args.checkpoint)["provenance"]):
        print(f"recce detect: warning: {warning}", file=sys.stderr)
    files, skipped = media_files(args.paths)
    results = scorer.score_files(files, args.save_masks, progress=not args.no_progress)
    meta = run_metadata(args.checkpoint, model, faces.name, args.threshold, scorer.runtime)
    if args.json:
        files = [r.to_dict(args.threshold) for r in results]
        print(json.dumps({**meta, "files": files, "skipped": [str(p) for p in skipped]}, indent=2))
    elif args.csv:
        write_csv(results, args.threshold, sys.stdout, meta)
    else:
        _print_table(results, args.threshold, f"{model.name} detector, face detector: {faces.name}")
        if skipped:
            listed = ", ".join(str(p) for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            print(f"  skipped {len(skipped)} file(s) that are not images or videos: {listed}")
    missing = [path for path in args.paths if not Path(path).exists()]
    return 1 if missing else 0


def _print_table(results: list[FileResult], threshold: float, detectors: str) -> None:
    rows = [("file", "kind", "frames", "with face", "P(fake)", "verdict")]
    for r in results:
        score = "" if r.score is None else f"{r.score:.3f}"
        rows.append((r.path, r.kind, str(r.frames), str(r.frames_with_face), score, r.verdict(threshold)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    failed = [r for r in results if r.error]
    no_face = sum(r.error is None and r.score is None for r in results)
    print(
        f"{len(results)} file(s): {len(results) - len(failed) - no_face} scored, {no_face} without a face, "
        f"{len(failed)} failed ({detectors}, threshold {threshold})"
    )
    for r in failed:
        print(f"  failed: {r.error}")
    for r in results:
        if r.warning:
            print(f"  warning: {r.warning} (scored on the {r.frames} frame(s) read)")
