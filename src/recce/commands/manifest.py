"""`recce manifest`: merge shard manifests into one, and summarise a manifest's contents."""

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


SUMMARY_COLUMNS = ("dataset", "split", "label", "method", "video")


def describe(frame: pd.DataFrame) -> pd.DataFrame:
    """Crops and videos per dataset, split, label and method (group-bys over Arrow strings, no per-row objects)."""
    grouped = frame.groupby(["dataset", "split", "label", "method"], observed=True, sort=True)
    return grouped.agg(crops=("video", "size"), videos=("video", "nunique")).reset_index()


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "merge":
            merged = manifest.merge(args.inputs, args.out)
            print(f"{args.out}: {len(merged)} crops from {len(args.inputs)} manifests")
            return 0
        frame = manifest.read(args.manifest, columns=SUMMARY_COLUMNS)  # paths are not needed
    except manifest.ManifestError as error:
        print(f"recce manifest: {error}", file=sys.stderr)
        return 2
    videos = frame.groupby("dataset", observed=True)["video"].nunique().sum()
    print(f"{args.manifest}: {len(frame)} crops from {videos} videos")
    if len(frame):
        print(describe(frame).to_string(index=False))
    return 0
