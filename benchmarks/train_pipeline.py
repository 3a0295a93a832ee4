"""Training input pipeline: end-to-end training images/s with the real data pipeline against the model alone.

Writes face crops the way `recce extract` stores them (299 px PNG by default; jittered 1.3x crops of skimage's
astronaut) and a manifest over them, then, for each DataLoader worker count, builds the real
`recce.engine.train.Trainer` and measures in one process:

(a) loader only: images/s that the Trainer's own DataLoader (`Trainer.train_loader`: ManifestDataset decode, resize,
    flip and normalise in the workers, EpochSampler, pinned memory on CUDA) delivers with no model;
(b) model only: `Trainer.train_step` (the detector's training step, backward, optimiser, scheduler) on one batch
    already on the device;
(c) end to end: `Trainer.train_step` fed by `Trainer.train_loader`, as `Trainer.run` does.

End to end / model only near 1 means the model is kept busy; well below 1 means the input pipeline is the bottleneck.
The crops are read from the page cache (as a dataset smaller than RAM is after the first epoch), not from disk.

    python benchmarks/train_pipeline.py --device cuda --size 299 --batch-size 32 --workers 0 4 8 --steps 30
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
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage
import torch
from torch.utils.data import default_collate

from recce.data import manifest
from recce.data.extract import IMAGE_FORMATS, ExtractError, ExtractSettings
from recce.data.faces import crop_face
from recce.engine.config import ConfigError, TrainConfig, load_config
from recce.engine.runtime import AMP_MODES
from recce.engine.train import Trainer

ASTRONAUT_FACE = (175.0, 35.0, 255.0, 145.0)  # x1, y1, x2, y2 of the face in skimage.data.astronaut(), roughly
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Row:
    workers: int
    first_batch_s: float  # a fresh loader's start-up: Trainer.run builds one per epoch
    loader_per_s: float
    model_per_s: float
    end_to_end_per_s: float

    @property
    def ratio(self) -> float:
        return self.end_to_end_per_s / self.model_per_s

    @property
    def expected(self) -> float:
        """The ratio the loader-only figure predicts: in series with the step without workers, overlapped with them."""
        if self.workers == 0:
            return self.loader_per_s / (self.loader_per_s + self.model_per_s)
        return min(1.0, self.loader_per_s / self.model_per_s)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = ExtractSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=299, help="training input size (data.size)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4], help="DataLoader worker counts to try")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (batches) of each measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first; they hold the loader start-up")
    parser.add_argument("--amp", choices=AMP_MODES, default="auto", help="train.amp")
    parser.add_argument("--crop-size", type=int, default=defaults.size, help="side of the stored crops")
    parser.add_argument("--format", choices=IMAGE_FORMATS, default=defaults.image_format, help="stored crop format")
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument(
        "--crops", type=int, default=None, help="crops written (default: one epoch holds every measured batch)"
    )
    parser.add_argument("--config", type=Path, default=None, help="training YAML to start from (default: the paper's)")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="further config overrides, e.g. model.name=xception train.compile=true",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the main process")
    parser.add_argument(
        "--threshold", type=float, default=0.9, help="end to end / model only below this: a data bottleneck"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    for name in ("size", "batch_size", "steps", "warmup", "crop_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.workers) < 0:
        parser.error("--workers must not be negative")
    try:
        args.crop_settings = ExtractSettings(
            size=args.crop_size, image_format=args.format, jpeg_quality=args.jpeg_quality
        )
    except ExtractError as error:
        parser.error(str(error))
    needed = (args.warmup + args.steps) * args.batch_size
    if args.crops is None:
        args.crops = needed + needed % 2
    elif args.crops < needed:
        parser.error(f"--crops {args.crops}: one epoch must hold (warmup + steps) x batch = {needed} crops")
    return args


def write_crops(folder: Path, count: int, settings: ExtractSettings, seed: int = 0) -> Path:
    """`count` crops of the astronaut's face, box and exposure jittered, half labelled fake; returns the manifest."""
    photo = skimage.data.astronaut()
    rng = np.random.default_rng(seed)
    x1, y1, x2, y2 = ASTRONAUT_FACE
    params = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality] if settings.image_format == "jpg" else []
    (folder / "crops").mkdir(parents=True)
    rows = []
    for index in range(count):
        dx, dy = rng.uniform(-12, 12, size=2)
        grow = rng.uniform(0.9, 1.1)
        half_w, half_h = grow * (x2 - x1) / 2, grow * (y2 - y1) / 2
        cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
        box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        crop = crop_face(photo, box, settings.scale, settings.size, settings.edge)
        crop = cv2.convertScaleAbs(crop, alpha=rng.uniform(0.85, 1.15), beta=rng.uniform(-15, 15))
        name = f"crops/{index:06d}.{settings.image_format}"
        if not cv2.imwrite(str(folder / name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), params):
            raise RuntimeError(f"{folder / name}: OpenCV could not write the crop")
        label = index % 2
        rows.append(
            {
                "path": name,
                "dataset": "benchmark",
                "split": "train",
                "video": f"astronaut{index:06d}",
                "frame": 0,
                "label": label,
                "method": "jitter" if label else "astronaut",
                "compression": f"q{settings.jpeg_quality}" if settings.image_format == "jpg" else "",
                "x1": box[0],
                "y1": box[1],
                "x2": box[2],
                "y2": box[3],
                "score": 1.0,
                "detector": "none",
            }
        )
    return manifest.write(manifest.to_frame(rows), folder / "manifest.parquet")


def train_config(args: argparse.Namespace, manifest_path: Path, out: Path, workers: int) -> TrainConfig:
    """The chosen YAML (or the paper's recipe) with the benchmark's data, batch, device and no validation."""
    overrides = [
        *args.set,
        f"data.manifest={manifest_path}",
        "data.train_split=train",
        "data.val_split=null",
        f"data.size={args.size}",
        f"data.workers={workers}",
        f"train.batch_size={args.batch_size}",
        f"train.device={args.device}",
        f"train.amp={args.amp}",
        f"train.out={out}",
    ]
    return load_config(args.config, overrides)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def feed_loader(
    trainer: Trainer, warmup: int, steps: int, consume: Callable[[torch.Tensor, torch.Tensor], object]
) -> tuple[float, float]:
    """Pass `warmup + steps` batches of a fresh Trainer loader to `consume`; (first-batch seconds, timed images/s)."""
    trainer.sampler.set_position(0, 0)
    start = time.perf_counter()
    batches = iter(trainer.train_loader())
    try:
        for index in range(warmup + steps):
            if index == warmup:
                synchronize(trainer.device)
                begin = time.perf_counter()
            images, labels = next(batches)
            if index == 0:
                first_batch_s = time.perf_counter() - start
            consume(images, labels)
        synchronize(trainer.device)
        elapsed = time.perf_counter() - begin
    finally:
        del batches  # shuts the workers down
    return first_batch_s, steps * trainer.config.train.batch_size / elapsed


def model_only(trainer: Trainer, batch: Batch, warmup: int, steps: int) -> float:
    """Images/s of the training step alone, on one batch already on the device."""
    images, labels = (tensor.to(trainer.device) for tensor in batch)
    for _ in range(warmup):
        trainer.train_step(images, labels)
    synchronize(trainer.device)
    begin = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images, labels)
    synchronize(trainer.device)
    return steps * len(images) / (time.perf_counter() - begin)


def measure(trainer: Trainer, args: argparse.Namespace) -> Row:
    workers = trainer.config.data.workers
    epoch = trainer.sampler.batches_per_epoch()
    if epoch < args.warmup + args.steps:
        raise SystemExit(f"{trainer.config.data.manifest}: one epoch has {epoch} batches, fewer than warmup + steps")
    progress(f"workers {workers}: loader only ...")
    first_batch_s, loader_per_s = feed_loader(trainer, args.warmup, args.steps, lambda images, labels: None)
    progress(f"workers {workers}: model only ...")
    batch = default_collate([trainer.train_set[i] for i in range(args.batch_size)])
    model_per_s = model_only(trainer, batch, args.warmup, args.steps)
    progress(f"workers {workers}: end to end ...")
    _, end_to_end_per_s = feed_loader(trainer, args.warmup, args.steps, trainer.train_step)
    progress(
        f"workers {workers}: loader {loader_per_s:.1f}, model {model_per_s:.1f}, "
        f"end to end {end_to_end_per_s:.1f} images/s"
    )
    return Row(workers, first_batch_s, loader_per_s, model_per_s, end_to_end_per_s)


def configuration(args: argparse.Namespace, trainer: Trainer, crops: Path) -> dict[str, object]:
    device = trainer.device
    config = trainer.config
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{device} ({name})",
        "cpu_count": f"{os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable by this process",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cv2": cv2.__version__,
        "detector": config.model.name,
        "amp": trainer.amp,
        "channels_last": config.train.channels_last and device.type == "cuda",
        "compile": config.train.compile,
        "size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "pin_memory": trainer.train_loader().pin_memory,
        "steps": f"{args.steps} timed after {args.warmup} warm-up",
        "crops": f"{args.crops} x {args.crop_size} px {args.format}"
        + (f" q{args.jpeg_quality}" if args.format == "jpg" else "")
        + f" ({human_bytes(crops)} on disk)",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def human_bytes(folder: Path) -> str:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return f"{total / 2**20:.1f} MiB"


def table(rows: list[Row]) -> str:
    lines = [
        "| workers | loader only (img/s) | model only (img/s) | end to end (img/s) | end to end / model only "
        "| expected from loader only | loader start-up (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.workers} | {row.loader_per_s:.1f} | {row.model_per_s:.2f} | {row.end_to_end_per_s:.2f} "
            f"| {row.ratio:.2f} | {row.expected:.2f} | {row.first_batch_s:.2f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[Row], threshold: float) -> str:
    """A row is data-bound when end to end falls below `threshold` of model only and the loader alone predicts it;
    a shortfall the loader does not explain is put down to noise or contention, which a shared machine has plenty of.
    """
    starved = [row for row in rows if row.ratio < threshold and row.expected < threshold]
    fed = [row for row in rows if row not in starved]
    unexplained = [row.workers for row in fed if row.ratio < threshold]
    if not starved:
        line = (
            f"verdict: data pipeline is not the bottleneck at these settings (the loader alone delivers "
            f"{min(row.loader_per_s / row.model_per_s for row in rows):.1f}x or more of the model's rate"
        )
        if unexplained:
            return (
                f"{line}; end to end still fell below {threshold:.0%} of model only with workers {unexplained}, "
                "which the loader does not explain: noise or CPU contention)"
            )
        return f"{line}; end to end >= {threshold:.0%} of model only with workers {[row.workers for row in rows]})"
    best = max(rows, key=lambda row: row.ratio)
    if not fed:
        return (
            f"verdict: data pipeline is the bottleneck at these settings (best end to end is {best.ratio:.0%} "
            f"of model only, with {best.workers} workers)"
        )
    return (
        f"verdict: data pipeline is the bottleneck at these settings with workers {[row.workers for row in starved]}, "
        f"not with workers {[row.workers for row in fed]}"
    )


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="recce-train-pipeline-") as tmp:
        data = Path(tmp) / "data"
        progress(f"writing {args.crops} crops ...")
        manifest_path = write_crops(data, args.crops, args.crop_settings)
        for workers in args.workers:
            try:
                config = train_config(args, manifest_path, Path(tmp) / "runs" / f"workers{workers}", workers)
                trainer = Trainer(config, progress=False)
            except ConfigError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            try:
                if not rows:
                    print_config(configuration(args, trainer, data / "crops"))
                rows.append(measure(trainer, args))
            finally:
                trainer.close()
            del trainer
            if args.device == "cuda":
                torch.cuda.empty_cache()
    print(table(rows))
    print(verdict(rows, args.threshold))
    return 0


def print_config(config: dict[str, object]) -> None:
    print("configuration:")
    for key, value in config.items():
        print(f"  {key}: {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
