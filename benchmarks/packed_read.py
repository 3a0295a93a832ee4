"""Reading face crops: one file per crop (today's layout) against tar shards (`recce extract --pack`).

Writes N crops as `recce extract` stores them (benchmarks/train_pipeline.py's jittered 299 px PNG crops of the
astronaut, about 130 kB each) with a manifest, packs them with `recce manifest pack` (timed: the converter), then
reads every crop in one process, three ways, in the same run:

- files, random order: the baseline (what training reads today, `data.order: shuffle`);
- shards, random order: the same global shuffle from the tar shards (one positioned read a crop);
- shards, shard order: `data.order: shards` (EpochSampler: shards shuffled, rows shuffled within a window of 4);
- shards, manifest order: sequential, as evaluation reads a packed manifest.

Each way twice: the bytes alone (the I/O part: `Path.read_bytes` against `ShardReader.read`) and the training path
(`ManifestDataset.load_image`: read + PNG decode), each cold and warm. Cold: every crop file and shard is synced and
evicted from the page cache with posix_fadvise(POSIX_FADV_DONTNEED) before the pass (no root needed, and only these
files are dropped); on a virtual machine the host may still cache the disk, so cold here is "not in this kernel's
page cache". Warm: the same pass again at once. Also printed: files opened and read syscalls (/proc/self/io syscr)
per crop.

    python benchmarks/packed_read.py --crops 2000 --pack-mb 16
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_pipeline import write_crops  # noqa: E402 (the benchmarks folder is not a package)

from recce.data import manifest  # noqa: E402
from recce.data.dataset import ManifestDataset  # noqa: E402
from recce.data.extract import ExtractSettings  # noqa: E402
from recce.data.packed import ShardReader, member_name, pack_manifest  # noqa: E402
from recce.engine.sampler import EpochSampler  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", type=int, default=2000, help="crops written and read (N)")
    parser.add_argument("--pack-mb", type=float, default=16, help="shard size (recce's default is 1024)")
    parser.add_argument("--window", type=int, default=4, help="data.shard_window for the shard order")
    parser.add_argument("--repeats", type=int, default=3, help="passes of each measurement; the median is shown")
    parser.add_argument("--dir", help="where to write the crops (default: a temporary folder, deleted after)")
    return parser.parse_args(argv)


def read_syscalls() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    return 0


def evict(paths: list[str]) -> None:
    """Drop these files' pages from the page cache (written pages are synced first, else they stay)."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(
    read: Callable[[int], object], order: np.ndarray, before: Callable[[], None], repeats: int
) -> tuple[float, int]:
    """Median seconds for reading every row of `order` (after `before()` each time), and the read syscalls a pass."""
    times = []
    for _ in range(repeats):
        before()
        calls = read_syscalls()
        start = time.perf_counter()
        for row in order:
            read(int(row))
        times.append(time.perf_counter() - start)
        calls = read_syscalls() - calls
    return float(np.median(times)), calls


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="recce-packed-read-") as tmp:
        folder = Path(tmp)
        print(f"writing {args.crops} crops ...", file=sys.stderr)
        source = write_crops(folder / "files", args.crops, ExtractSettings())
        start = time.perf_counter()
        summary = pack_manifest(source, folder / "packed", limit=round(args.pack_mb * 2**20), progress=False)
        pack_s = time.perf_counter() - start
        files, packed = ManifestDataset(source), ManifestDataset(summary.manifest)
        frame = manifest.read(summary.manifest)
        crop_files = files.frame["abspath"].tolist()
        shard_files = sorted(set(frame[manifest.SHARD_ABSPATH]))
        total_bytes = int(frame["size"].sum())
        reader = ShardReader()
        offsets, sizes = frame["offset"].to_numpy(np.int64), frame["size"].to_numpy(np.int64)
        shards, members = frame[manifest.SHARD_ABSPATH].tolist(), [member_name(p) for p in frame["path"]]

        random_order = np.random.default_rng(0).permutation(len(frame))
        sampler = EpochSampler(packed.labels, 1, balance=False, seed=0, groups=packed.shard_codes, window=args.window)
        shard_order = sampler.epoch_order(0)[0]
        ways = [
            ("files", "random", random_order, lambda i: Path(crop_files[i]).read_bytes(), files.load_image),
            (
                "shards",
                "random",
                random_order,
                lambda i: reader.read(shards[i], int(offsets[i]), int(sizes[i]), members[i]),
                packed.load_image,
            ),
            (
                "shards",
                "shard order",
                shard_order,
                lambda i: reader.read(shards[i], int(offsets[i]), int(sizes[i]), members[i]),
                packed.load_image,
            ),
            (
                "shards",
                "manifest order",
                np.arange(len(frame)),
                lambda i: reader.read(shards[i], int(offsets[i]), int(sizes[i]), members[i]),
                packed.load_image,
            ),
        ]
        print(f"# packed_read: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(f"file system: {folder} ({os.statvfs(folder).f_bsize} B blocks)")
        print(f"crops: {args.crops} PNG 299 px, {total_bytes / 2**20:.0f} MiB, {total_bytes / args.crops / 1e3:.0f} kB")
        print(f"shards: {summary.shards} of <= {args.pack_mb:g} MiB; shard order window {args.window}")
        print(f"each figure: the median of {args.repeats} passes over all crops; cv2 threads 1")
        print(f"recce manifest pack: {pack_s:.1f} s ({args.crops / pack_s:.0f} crops/s, warm source files)")
        print()
        print("| layout | order | what | cache | crops/s | MB/s | files opened | read syscalls/crop |")
        print("|---|---|---|---|---:|---:|---:|---:|")
        for layout, order_name, order, read_bytes, load in ways:
            opened = args.crops if layout == "files" else len(shard_files)
            for what, read in (("bytes", read_bytes), ("read + decode", load)):
                for cache in ("cold", "warm"):
                    paths = crop_files if layout == "files" else shard_files
                    before = (lambda paths=paths: evict(paths)) if cache == "cold" else (lambda: None)
                    seconds, calls = timed(read, order, before, args.repeats)
                    print(
                        f"| {layout} | {order_name} | {what} | {cache} | {args.crops / seconds:.0f} | "
                        f"{total_bytes / seconds / 1e6:.0f} | {opened} | {calls / args.crops:.1f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
