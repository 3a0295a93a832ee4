"""Face extraction: dataset index -> sampled frames -> detected, cropped faces on disk -> a manifest.

Output folder layout (O):
- `crops/<dataset>/<video>/<frame:06d>.<png|jpg>`: the face crops; each manifest row also holds the face's five
  landmarks in the crop (`landmarks`, with `landmarks_source`: the face detector's, or placed in the box when it
  has none, as Haar), which Add-Net's face mask is drawn from.
- `parts/<dataset>/<quoted video id>.parquet`: one per finished item, written last and atomically; its
  existence marks the item done, so an interrupted run resumes where it stopped. It holds the item's
  manifest rows (paths relative to O) and, in the Parquet metadata, the sampled frames without a face.
- `parts/record.sqlite` and `parts/rows/`: the record of finished items and their manifest rows, absorbed from
  the parts in batches (see recce.data.extract_record); a rerun reads the record, not the parts, and keeps the
  manifest when no item was recorded since it was written. Once recorded, an item stays done even if its part
  file is deleted; parts not yet recorded (a kill, or a folder written before the record) are recorded on resume.
- `parts/<dataset>/settings.json`: the settings that shaped the crops; resuming with others is refused.
- `manifest.parquet`, `failures.csv` (path, reason) and `no_face.csv` (frames where no face was kept);
  a shard K of N writes `manifest-shard-K-of-N.parquet`, `failures-shard-K-of-N.csv` and so on.

With `pack` (`recce extract --pack`), the crops go into tar shards instead of files (see recce.data.packed):
`shards/<manifest name>-NNNNNN.tar`, members named by the crop's path above, and the manifest rows point into them
(`shard`, `offset`, `size`). Workers return an item's encoded crops and rows instead of writing them; this process
alone appends them to the open shard, which is closed (renamed from its temporary name) once it reaches the pack
size or holds RECORD_BATCH items, and its items are then recorded with a rows file named after it. So a kill
leaves at most one temporary shard (deleted on the next start) and a closed shard no record names (deleted too);
the items in them are redone, recorded ones never. Each `--shard K/N` writes its own tar files.

A video id too long for a file name (over NAME_LIMIT bytes once quoted, e.g. 32 CJK characters) or with
characters some file systems refuse names its part `#<sha256 of the id>.parquet` and its crops
`crops/<dataset>/#hashed/<sha256>/`; the manifest keeps the id itself.

Every file is written under a temporary name and renamed, so a kill at any moment leaves either the old
state or the new one; crops of an unfinished item are deleted before the item is redone. One run writes an
output folder at a time (a lock, see recce.locks), shards of one extraction excepted: their items are disjoint.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import signal
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recce.data import manifest, packed
from recce.data.extract_record import BATCH as RECORD_BATCH
from recce.data.extract_record import ExtractRecord
from recce.data.faces import FaceDetector, build_detector, choose_face, crop_face
from recce.data.faces.base import DETECTOR_NAMES
from recce.data.faces.crop import EDGE_MODES, crop_landmarks
from recce.data.faces.mask import face_landmarks
from recce.data.indexers import MediaItem, index_dataset, shard_items
from recce.data.video import MAX_PIXELS, MediaError, last_line, media_length, read_media, sample_indices
from recce.locks import OutputLock, die_with_parent

logger = logging.getLogger("recce")

CROPS_DIR = "crops"
PARTS_DIR = "parts"
PART_METADATA_KEY = b"recce.extract"
NO_DETECTOR = "none"
SAMPLING_MODES = ("uniform", "every", "all")
IMAGE_FORMATS = ("png", "jpg")
_CROP_FILE = re.compile(r"^\d{6,}\.(png|jpg)$|^\..+\.tmp$")
NAME_LIMIT = 200  # bytes of a file or folder name; 255 is the common maximum, temporary names add some
_UNPORTABLE = re.compile(r'[\x00-\x1f\x7f\\:*?"<>|]')  # refused by Windows or macOS file systems


class ExtractError(ValueError):
    """An extraction that cannot start (bad option, output folder made with other settings)."""


@dataclass(frozen=True)
class ExtractSettings:
    """Everything that decides an item's crops; stored with the parts so a resume cannot mix settings."""

    sampling: str = "uniform"  # uniform (count frames evenly spaced), every (each `every`-th), all
    frames: int = 32
    every: int = 1
    detector: str = "auto"  # a recce.data.faces detector name, or "none": the whole image is the crop
    weights: str | None = None
    choose: str = "score"  # which face when several: score or largest
    min_score: float = 0.6
    scale: float = 1.3
    size: int = 299
    edge: str = "clip"
    image_format: str = "png"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING_MODES:
            raise ExtractError(f"unknown sampling {self.sampling!r}; use one of {', '.join(SAMPLING_MODES)}")
        if self.detector not in (*DETECTOR_NAMES, NO_DETECTOR):
            names = ", ".join((*DETECTOR_NAMES, NO_DETECTOR))
            raise ExtractError(f"unknown face detector {self.detector!r}; use one of {names}")
        if self.choose not in ("score", "largest"):
            raise ExtractError(f"unknown face choice {self.choose!r}; use score or largest")
        if self.edge not in EDGE_MODES:
            raise ExtractError(f"unknown crop edge mode {self.edge!r}; use one of {', '.join(EDGE_MODES)}")
        if self.image_format not in IMAGE_FORMATS:
            raise ExtractError(f"unknown image format {self.image_format!r}; use png or jpg")
        if not 0 <= self.jpeg_quality <= 100:
            raise ExtractError(f"JPEG quality must be within 0..100, got {self.jpeg_quality}")
        if self.frames <= 0 or self.every <= 0 or self.size <= 0:
            raise ExtractError("frame count, frame step and crop size must be positive")


@dataclass
class ItemOutcome:
    """What happened to one item in a worker."""

    source: str
    failed: str = ""  # the reason, when the item could not be read
    frames: int = 0
    faces: int = 0
    packed: tuple[list[tuple[str, bytes]], list[dict], dict] | None = None  # with pack: crops, rows, part metadata


@dataclass
class Collected:
    """The combined outputs of every finished item of a shard."""

    manifest: Path
    rows: int
    detectors: list[str]
    no_face: int
    resplit: int = 0  # finished items whose split the index now gives differently (split options changed)


@dataclass
class ExtractSummary:
    dataset: str
    items: int  # in this shard
    done: int = 0  # extracted by this run
    already_done: int = 0
    failed: int = 0
    frames: int = 0  # sampled by this run
    faces: int = 0
    collected: Collected | None = None  # the manifest over every finished item of the shard
    failures: list[tuple[str, str]] = field(default_factory=list)  # this run's, plus the indexer's skips
    index_skipped: int = 0
    interrupted: bool = False

    @property
    def no_face(self) -> int:
        return self.frames - self.faces


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ExtractError(f"shard {text!r} is not K/N with 1 <= K <= N (e.g. 2/8)")
    return int(match[1]), int(match[2])


def _digest(video: str) -> str:
    return hashlib.sha256(video.encode("utf-8")).hexdigest()


def part_path(out: Path, item: MediaItem) -> Path:
    """The item's done-marker; percent-quoting keeps distinct video ids distinct as flat file names, and a hash
    (after '#', which quoting never leaves) stands in for an id too long for a file name."""
    name = quote(item.video, safe="")
    if len(name) > NAME_LIMIT:
        name = f"#{_digest(item.video)}"
    return out / PARTS_DIR / item.dataset / f"{name}.parquet"


def crop_dir(out: Path, item: MediaItem) -> Path:
    parts = item.video.split("/")
    portable = all(
        part not in ("", ".", "..") and len(part.encode("utf-8")) <= NAME_LIMIT and not _UNPORTABLE.search(part)
        for part in parts
    )
    return out / CROPS_DIR / item.dataset / (item.video if portable else f"#hashed/{_digest(item.video)}")


def output_names(shard: tuple[int, int] | None) -> dict[str, str]:
    suffix = "" if shard is None else f"-shard-{shard[0]}-of-{shard[1]}"
    return {
        "manifest": f"manifest{suffix}.parquet",
        "failures": f"failures{suffix}.csv",
        "no_face": f"no_face{suffix}.csv",
    }


def _replace_atomically(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Write under a temporary name (in `tmp_dir`, on the same file system) and rename into place."""
    tmp = (tmp_dir or path.parent) / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _remove_stale_outputs(out: Path, shard: tuple[int, int] | None) -> None:
    """Temporary files of this shard's outputs that a killed run left (other shards may be writing theirs)."""
    for name in output_names(shard).values():
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    _replace_atomically(path, buffer.getvalue().encode("utf-8"))


def _check_settings(out: Path, dataset: str, settings: ExtractSettings, record: ExtractRecord) -> None:
    """Record the settings; refuse other ones once an item was finished (a part file, or recorded) with them."""
    path = out / PARTS_DIR / dataset / "settings.json"
    current = asdict(settings)
    finished = any(path.parent.glob("*.parquet")) or record.has_items(f"{dataset}/")
    if path.is_file() and finished:
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {old!r} before, {new!r} now" for k, (old, new) in changed.items())
            raise ExtractError(
                f"{out}: {dataset} was extracted there with other settings ({details}); "
                "re-run with the same options or choose another --out"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, json.dumps(current, indent=2).encode("utf-8"))


# Per-process worker state: the settings, output folder and the detector, built once per process.
_worker: dict = {}


def _init_worker(
    settings: ExtractSettings,
    out: Path,
    device: str | None,
    batch_size: int,
    max_pixels: int,
    threads: int,
    parent: int | None,
    pack: bool = False,
) -> None:
    if parent is not None:
        die_with_parent(parent)  # a killed run must not leave workers writing into the folder
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
        cv2.setNumThreads(threads)
        import torch  # here, not at the top: a rerun with nothing left to do never needs it

        torch.set_num_threads(threads)
    _worker.update(
        settings=settings, out=out, detector=None, batch_size=batch_size, max_pixels=max_pixels, error=None, pack=pack
    )
    if settings.detector == NO_DETECTOR:
        return
    try:
        _worker["detector"] = build_detector(
            settings.detector,
            weights=settings.weights,
            device=device,
            score_threshold=settings.min_score,
            batch_size=batch_size,
        )
    except Exception as error:  # raised from the first task: a failing Pool initializer is retried forever
        _worker["error"] = error


def _batches(pairs: Iterator[tuple[int, np.ndarray]], size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    while batch := list(islice(pairs, size)):
        yield batch


def _clear_crops(folder: Path) -> None:
    """Delete crop and temporary files an unfinished attempt left (sub-folders belong to other videos)."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and _CROP_FILE.match(path.name):
                path.unlink()


def _encode_crop(path: Path, crop: np.ndarray, settings: ExtractSettings) -> bytes:
    """The crop file's bytes, the same whether written as a file or packed into a shard."""
    params = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality] if settings.image_format == "jpg" else []
    ok, encoded = cv2.imencode(f".{settings.image_format}", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the crop")
    return encoded.tobytes()


def _rows_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pandas(manifest.to_frame(rows), preserve_index=False)


def _write_part(path: Path, rows: list[dict], metadata: dict, tmp_dir: Path) -> None:
    """The item's rows, and its metadata in the Parquet footer; the temporary file sits among the item's crops,
    where a redo of the item deletes it if a kill left it."""
    table = _rows_table(rows)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), PART_METADATA_KEY: json.dumps(metadata).encode("utf-8")}
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(path, sink.getvalue().to_pybytes(), tmp_dir)


def extract_item(
    item: MediaItem,
    settings: ExtractSettings,
    out: Path,
    detector: FaceDetector | None,
    batch_size: int = 16,
    max_pixels: int = MAX_PIXELS,
    pack: bool = False,
) -> ItemOutcome:
    """Crop the faces of one item and write its part (with `pack`: return its crops and rows instead); a failure
    is the item's, reported, and leaves no crops."""
    folder = crop_dir(out, item)
    _clear_crops(folder)
    try:
        return _extract_item(item, settings, out, folder, detector, batch_size, max_pixels, pack)
    except MediaError as error:
        failed = str(error)
    except Exception as error:  # any library's failure on a hostile file is that file's, never the run's
        failed = f"{item.source}: {error.__class__.__name__} while extracting ({last_line(error)})"
    _clear_crops(folder)
    return ItemOutcome(source=str(item.source), failed=failed)


def _extract_item(
    item: MediaItem,
    settings: ExtractSettings,
    out: Path,
    folder: Path,
    detector: FaceDetector | None,
    batch_size: int,
    max_pixels: int,
    pack: bool,
) -> ItemOutcome:
    length = media_length(item.source, item.kind, max_pixels)
    indices = sample_indices(length, settings.sampling, settings.frames, settings.every)
    detector_name = detector.name if detector is not None else NO_DETECTOR
    if not pack:
        folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    members: list[tuple[str, bytes]] = []
    no_face: list[int] = []
    for batch in _batches(read_media(item.source, item.kind, indices, max_pixels), batch_size):
        found = detector.detect([frame for _, frame in batch]) if detector is not None else [None] * len(batch)
        for (index, frame), faces in zip(batch, found, strict=True):
            if detector is None:
                crop, box, score = frame, (0.0, 0.0, float(frame.shape[1]), float(frame.shape[0])), 1.0
                landmarks = {manifest.LANDMARKS: None, manifest.LANDMARKS_SOURCE: ""}
            else:
                face = choose_face(faces, settings.choose, settings.min_score)
                if face is None:
                    no_face.append(index)
                    continue
                crop = crop_face(frame, face.box, settings.scale, settings.size, settings.edge)
                box, score = face.box, face.score
                points, source = face_landmarks(face)
                points = crop_landmarks(points, box, frame.shape[:2], settings.scale, settings.edge)
                landmarks = {manifest.LANDMARKS: points.reshape(10), manifest.LANDMARKS_SOURCE: source}
            path = folder / f"{index:06d}.{settings.image_format}"
            encoded = _encode_crop(path, crop, settings)
            if pack:
                members.append((path.relative_to(out).as_posix(), encoded))
            else:
                _replace_atomically(path, encoded)
            rows.append(
                {
                    "path": path.relative_to(out).as_posix(),
                    "dataset": item.dataset,
                    "split": item.split,
                    "video": item.video,
                    "frame": index,
                    "label": item.label,
                    "method": item.method,
                    "compression": item.compression,
                    "x1": box[0],
                    "y1": box[1],
                    "x2": box[2],
                    "y2": box[3],
                    "score": score,
                    "detector": detector_name,
                    **landmarks,
                }
            )
    metadata = {"source": str(item.source), "detector": detector_name, "sampled": indices, "no_face": no_face}
    outcome = ItemOutcome(source=str(item.source), frames=len(indices), faces=len(rows))
    if pack:
        outcome.packed = (members, rows, metadata)
    else:
        _write_part(part_path(out, item), rows, metadata, tmp_dir=folder)
    return outcome


def _run_item(item: MediaItem) -> ItemOutcome:
    if _worker["error"] is not None:
        raise _worker["error"]
    w = _worker
    return extract_item(item, w["settings"], w["out"], w["detector"], w["batch_size"], w["max_pixels"], w["pack"])


def _process(
    todo: list[MediaItem],
    settings: ExtractSettings,
    out: Path,
    *,
    workers: int,
    device: str | None,
    batch_size: int,
    max_pixels: int,
    pack: bool,
) -> Iterator[ItemOutcome]:
    if workers == 0:
        _init_worker(settings, out, device, batch_size, max_pixels, threads=0, parent=None, pack=pack)
        yield from map(_run_item, todo)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # safe with torch and CUDA, and the same on every OS
    initargs = (settings, out, device, batch_size, max_pixels, threads, os.getpid(), pack)
    with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        yield from pool.imap_unordered(_run_item, todo, chunksize=1)


def record_key(out: Path, item: MediaItem) -> str:
    """The item's name in the extraction record: its dataset and part file name."""
    return f"{item.dataset}/{part_path(out, item).name}"


def absorb(record: ExtractRecord, out: Path, items: Iterable[MediaItem]) -> None:
    """Record finished items from their part files, a batch (one rows file, one transaction) at a time."""
    items = iter(items)
    while batch := list(islice(items, RECORD_BATCH)):
        parts = []
        for item in batch:
            table = pq.read_table(part_path(out, item))
            metadata = json.loads(table.schema.metadata[PART_METADATA_KEY])
            parts.append(
                (record_key(out, item), table.replace_schema_metadata(None), metadata["detector"], metadata["no_face"])
            )
        record.absorb(parts)


class _Packer:
    """This process's side of `pack`: appends finished items' crops to the open shard and records them once it is
    closed, with a rows file named after it (so a rerun can tell a shard no record names)."""

    def __init__(self, out: Path, tag: str, limit: int, record: ExtractRecord) -> None:
        folder = out / packed.SHARDS_DIR
        referenced = {name.removesuffix(".parquet") + ".tar" for name in record.rows_files()}
        first = packed.remove_unreferenced(folder, tag, referenced)
        self.out, self.record = out, record
        self.writer = packed.ShardWriter(folder, tag, limit, first)
        self.pending: list[tuple[str, pa.Table, str, list[int]]] = []
        self.closed: Path | None = None  # the closed shard whose items are not recorded yet

    def add(self, item: MediaItem, outcome: ItemOutcome) -> None:
        members, rows, metadata = outcome.packed
        start = self.writer.size if self.writer.is_open else 0
        offsets = self.writer.add(members)
        try:
            shard = f"{packed.SHARDS_DIR}/{self.writer.name}"
            for row, (_, data), offset in zip(rows, members, offsets, strict=True):
                row.update(shard=shard, offset=offset, size=len(data))
            table = _rows_table(rows)
            self.pending.append((record_key(self.out, item), table, metadata["detector"], metadata["no_face"]))
        except BaseException:
            self.writer.truncate(start)
            raise
        if self.writer.full or len(self.pending) >= RECORD_BATCH:
            self.commit()

    def commit(self) -> None:
        """Close the open shard and record its items (again after an interruption: recording is idempotent)."""
        if self.writer.is_open:
            self.closed = self.writer.close()
        if self.pending and self.closed is not None:  # None: closing was interrupted, the items are redone
            self.record.absorb(self.pending, stem=self.closed.stem)
        self.pending.clear()
        self.closed = None


def _file_state(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def collect(out: Path, items: Sequence[MediaItem], shard: tuple[int, int] | None, record: ExtractRecord) -> Collected:
    """Combine the recorded items of the shard into the manifest and the no-face list; when the recorded items
    are the ones the present outputs were written from, keep those outputs (a rerun with nothing to do).

    The split comes from the current index, not from the record: rerunning with other split options (e.g.
    `--val-fraction`) re-splits the finished items without re-cropping them.
    """
    names = output_names(shard)
    paths = [out / names["manifest"], out / names["no_face"]]
    finished = record.finished()
    keyed = [(item, key) for item in items if (key := record_key(out, item)) in finished]
    digest = hashlib.sha256(
        "\n".join(f"{key}:{finished[key].rows_file}:{item.split}" for item, key in keyed).encode("utf-8")
    )
    saved = record.output_state(names["manifest"])
    if saved is not None and saved["items"] == digest.hexdigest() and saved["files"] == [_file_state(p) for p in paths]:
        return Collected(manifest=paths[0], rows=saved["rows"], detectors=saved["detectors"], no_face=saved["no_face"])
    wanted = {key: finished[key] for _, key in keyed}
    combined = manifest.to_frame(record.rows(wanted).to_pandas() if wanted else [])
    current = pd.DataFrame(
        [(item.dataset, item.video, item.split) for item, _ in keyed], columns=["dataset", "video", "now"]
    ).astype(str)
    now = combined[["dataset", "video"]].astype(str).merge(current, on=["dataset", "video"], how="left")["now"]
    moved = (now.notna() & (now != combined["split"].astype(str))).to_numpy()
    resplit = combined.loc[moved, ["dataset", "video"]].drop_duplicates().shape[0]
    combined.loc[moved, "split"] = now[moved].to_numpy()
    combined = combined.sort_values(["dataset", "split", "video", "frame"], kind="stable")
    manifest.write(combined, paths[0])
    no_face_rows = [
        (item.dataset, item.split, item.video, i, item.source) for item, key in keyed for i in finished[key].no_face
    ]
    _write_csv(paths[1], ("dataset", "split", "video", "frame", "source"), no_face_rows)
    detectors = sorted({finished[key].detector for _, key in keyed})
    state = {"items": digest.hexdigest(), "files": [_file_state(p) for p in paths], "rows": len(combined)}
    record.set_output_state(names["manifest"], {**state, "detectors": detectors, "no_face": len(no_face_rows)})
    return Collected(
        manifest=paths[0], rows=len(combined), detectors=detectors, no_face=len(no_face_rows), resplit=resplit
    )


def output_lock(out: Path, shard: tuple[int, int] | None) -> list[OutputLock]:
    """Shards of one extraction run side by side (their items are disjoint); anything else needs the folder alone."""
    if shard is None:
        return [OutputLock(out, "recce extract")]
    name = output_names(shard)["manifest"].removesuffix(".parquet")
    return [
        OutputLock(out, f"recce extract --shard {shard[0]}/{shard[1]}", shared=True),
        OutputLock(out, f"recce extract --shard {shard[0]}/{shard[1]}", name=f".recce-{name}.lock"),
    ]


def extract(
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    settings: ExtractSettings,
    *,
    index_options: dict | None = None,
    workers: int = 0,
    device: str | None = None,
    batch_size: int = 16,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
    pack_size: int | None = None,
) -> ExtractSummary:
    """Extract face crops of a dataset into `out`, resuming finished items; Ctrl-C still writes the manifest.

    workers=0 runs in this process; otherwise a spawn pool of that many processes, each with its own detector.
    Images and frames over `max_pixels` are refused (reported as failures) before they are decoded.
    `pack_size` (bytes) packs the crops into tar shards of about that size instead of writing files.
    """
    if workers < 0 or batch_size <= 0 or max_pixels <= 0:
        raise ExtractError("workers must be >= 0, batch size and pixel limit > 0")
    if pack_size is not None and pack_size <= 0:
        raise ExtractError(f"pack size must be positive, got {pack_size} bytes")
    out = Path(out)
    with ExitStack() as held:
        for lock in output_lock(out, shard):
            held.enter_context(lock)
        tag = output_names(shard)["manifest"].removesuffix(".parquet")
        record = held.enter_context(ExtractRecord(out / PARTS_DIR, tag))
        _check_settings(out, dataset, settings, record)
        _remove_stale_outputs(out, shard)
        packer = _Packer(out, tag, pack_size, record) if pack_size is not None else None
        result = index_dataset(dataset, Path(root), shard=shard, **(index_options or {}))  # this shard's items only
        items = shard_items(result.items, None)
        recorded = record.finished().keys()
        unrecorded = [item for item in items if record_key(out, item) not in recorded]
        absorb(record, out, (item for item in unrecorded if part_path(out, item).is_file()))  # older runs' parts
        todo = [item for item in unrecorded if not part_path(out, item).is_file()]
        unreported = {str(item.source): item for item in todo}  # no outcome yet
        finished: list[MediaItem] = []  # not recorded yet
        run = ExtractSummary(dataset=dataset, items=len(items), already_done=len(items) - len(todo))
        run.index_skipped = len(result.skipped)
        run.failures = list(result.skipped)
        bar = tqdm(total=len(todo), unit="video", desc=f"extract {dataset}", disable=None if progress else True)
        outcomes = _process(
            todo,
            settings,
            out,
            workers=workers,
            device=device,
            batch_size=batch_size,
            max_pixels=max_pixels,
            pack=packer is not None,
        )
        try:
            for outcome in outcomes:
                if outcome.failed:
                    run.failed += 1
                    unreported.pop(outcome.source, None)
                    run.failures.append((outcome.source, outcome.failed.removeprefix(f"{outcome.source}: ")))
                    logger.warning("%s", outcome.failed)
                else:
                    run.done += 1
                    run.frames += outcome.frames
                    run.faces += outcome.faces
                    item = unreported.pop(outcome.source)
                    if packer is not None:
                        packer.add(item, outcome)
                    else:
                        finished.append(item)
                    if len(finished) == RECORD_BATCH:
                        absorb(record, out, finished)
                        finished.clear()
                bar.update()
                bar.set_postfix(faces=run.faces, failed=run.failed, refresh=False)
        except KeyboardInterrupt:
            run.interrupted = True
        finally:
            outcomes.close()  # stops the pool now, also when the interrupt arrived outside the generator
            bar.close()
            stopped = [item for item in unreported.values() if part_path(out, item).is_file()]  # as the run stopped
            absorb(record, out, finished + stopped)
            if packer is not None:
                packer.commit()
            run.collected = collect(out, items, shard, record)
            _write_csv(out / output_names(shard)["failures"], ("path", "reason"), run.failures)
        return run
