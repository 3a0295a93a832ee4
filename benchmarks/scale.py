"""DFDC-scale data steps: time, peak memory and growth exponent at 10k / 100k / 1M manifest rows (4M with --huge).

Builds synthetic manifests in the project's schema, shaped like DFDC (32 frames a video, about 16 % real videos,
50 training parts, 4 % test) and times, each in a fresh process so peak memory is its own:

- `read`: `recce.data.manifest.read` (validated frame plus absolute paths);
- `merge`: `manifest.merge` of the manifest split into 4 shard manifests in sibling folders;
- `info`: the `recce manifest info` command's work in-process, and `info-cli` the whole command in a new process:
  `python -m recce manifest info M`, and the command's module alone (what a CLI importing only the chosen
  command costs);
- `evaluate`: `recce.metrics.evaluate_scores` with 1000 bootstrap resamples (frame CI clustered by video);
- `dataset`: `ManifestDataset(M, splits=["train"])` construction, training start-up, with its bytes per row: "ours"
  reads only the kept columns with the split filter pushed into the Parquet read; "read all" is the path before it
  (`manifest.read` of every column, then the selection); "ours (shared)" is `recce.data.rows.shared_rows`, the
  first process writing the memory-mapped copy ("build") and the others mapping it ("map").
- `ranks`: W processes (`--ranks`, default 4) alive at once, each building the training dataset as a distributed
  run's processes do and reading the path and label of its share of an epoch's rows; each reports its private
  memory growth (USS: Private_Clean + Private_Dirty of /proc/self/smaps_rollup) and its PSS growth, "in memory"
  (each process reads the manifest itself) against "shared" (every process maps one `shared_rows` copy).
- `resume`: `recce.data.extract.extract` (folder dataset, `--detector none`) rerun over an output folder where every
  video is finished and nothing is left to do; sized in videos (`--resume-videos`, 32 crops a video), its part files
  faked from the synthetic manifest and its media empty files. "ours (migrates)" is the first run over the folder as
  the code before issue 12 left it (it records every part once), "ours" the rerun after it, "baseline" the old
  resume (a stat per video, then every part file read again and the manifest rebuilt).

- `index` (sized in videos, `--steps index --index-videos 119000`; not in the default steps): what one shard of
  `recce extract dfdc --shard K/N` (`--index-shards`, default 8) spends indexing a DFDC tree of empty video files in
  50 `dfdc_train_part_*` folders with their metadata.json plus `test/labels.csv`: "baseline" indexes every video
  (a stat for its existence and one for its identity each) and then keeps the shard (`shard_items`); "ours" is
  `index_dataset(..., shard=(K, N))`, which lists each folder once and stats only the shard's own files. The check
  compares the two item lists; the stat count is of `os.stat` calls.

Each step is measured for this package ("ours") and, where the old code can still run, for the implementation
before issue 12 ("baseline"), kept only in this script: per-row pathlib joins in `read`, per-row `os.path.relpath`
in `merge`, a bootstrap that sorts the samples again for every chunk of resamples, and a dataset holding the whole
selected frame plus fixed-width numpy string arrays. The baseline bootstrap is checked to give bit-identical
intervals. Peak memory is the growth of the process's peak RSS over its RSS before the step (Linux
`/proc/self/clear_refs`). The exponent is the slope of log(time) between consecutive sizes.

    python benchmarks/scale.py                  # 10k, 100k, 1M rows
    python benchmarks/scale.py --huge           # adds 4M rows
    python benchmarks/scale.py --sizes 10000 100000 --steps evaluate --no-baseline
    python benchmarks/scale.py --steps resume --resume-videos 10000 100000
    python benchmarks/scale.py --steps dataset ranks --ranks 4
    python benchmarks/scale.py --steps index --index-videos 10000 119000 --index-shards 8
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recce import metrics
from recce.data import manifest

FRAMES_PER_VIDEO = 32
REAL_FRACTION = 0.16  # DFDC: about 19k real of 119k training videos
TEST_FRACTION = 0.04  # 5k test of 124k videos
TRAIN_PARTS = 50
N_BOOT = 1000
STEPS = ("read", "merge", "info", "evaluate", "dataset", "ranks")
DATASET_IMPLS = ("ours", "read all", "ours (shared, build)", "ours (shared, map)")
RANK_IMPLS = ("in memory", "shared")
RESUME_IMPLS = ("baseline", "ours (migrates)", "ours")
SHARDS = 4


# ----------------------------------------------------------------------------------------------- synthetic data
def synthetic_manifest(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """A DFDC-shaped manifest of `n_rows` crops, built with Arrow string kernels (no per-row Python work)."""
    rng = np.random.default_rng(seed)
    n_videos = -(-n_rows // FRAMES_PER_VIDEO)
    letters = rng.integers(ord("a"), ord("z") + 1, size=(n_videos, 10), dtype=np.uint8)
    names = pa.array(letters.view("S10").ravel()).cast(pa.string())
    test = rng.random(n_videos) < TEST_FRACTION
    part = rng.integers(0, TRAIN_PARTS, n_videos)
    folders = np.where(test, "test", np.char.add("dfdc_train_part_", part.astype(str)))
    video = pc.binary_join_element_wise(pa.array(folders), names, "/")
    label = (rng.random(n_videos) >= REAL_FRACTION).astype(np.int8)

    of_row = np.repeat(np.arange(n_videos), FRAMES_PER_VIDEO)[:n_rows]
    frame = np.tile(np.arange(FRAMES_PER_VIDEO) * 9, n_videos)[:n_rows]
    row_video = video.take(pa.array(of_row))
    frame_text = pc.utf8_lpad(pc.cast(pa.array(frame), pa.string()), 6, "0")
    path = pc.binary_join_element_wise("crops/dfdc/", row_video, "/", frame_text, ".png", "")
    x1 = rng.uniform(200, 900, n_rows).astype(np.float32)
    y1 = rng.uniform(50, 400, n_rows).astype(np.float32)
    side = rng.uniform(150, 400, n_rows).astype(np.float32)
    columns = {
        "path": path,
        "dataset": pa.array(np.full(n_rows, "dfdc")),
        "split": pa.array(np.where(test[of_row], "test", "train")),
        "video": row_video,
        "frame": frame,
        "label": label[of_row],
        "method": pa.array(np.where(label[of_row] == 1, "DFDC", "original")),
        "compression": pa.array(np.full(n_rows, "")),
        "x1": x1,
        "y1": y1,
        "x2": x1 + side,
        "y2": y1 + side,
        "score": rng.uniform(0.9, 1.0, n_rows).astype(np.float32),
        "detector": pa.array(np.full(n_rows, "retinaface-mobilenet0.25")),
    }
    frame_table = pd.DataFrame(
        {k: pd.Series(pd.arrays.ArrowStringArray(v) if isinstance(v, pa.Array) else v) for k, v in columns.items()}
    )
    return manifest.to_frame(frame_table)


def synthetic_scores(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The evaluation's score table: each video has its own level, frames scatter around it."""
    rng = np.random.default_rng(seed)
    scores = table[["dataset", "video", "label", "method", "frame"]].copy()
    codes = pd.factorize(scores["video"])[0]
    level = rng.normal(0.35 + 0.3 * scores["label"].groupby(codes).first().to_numpy(), 0.15)
    scores["score"] = np.clip(level[codes] + rng.normal(0, 0.1, len(scores)), 0, 1).round(4)
    return scores


def prepare(folder: Path, n_rows: int) -> Path:
    """The manifest, 4 shard manifests (for merge) and a score table (for evaluate) under `folder`, built once."""
    path = folder / f"{n_rows}" / "manifest.parquet"
    if path.is_file():
        return path
    frame = synthetic_manifest(n_rows)
    manifest.write(frame, path)
    for k in range(SHARDS):  # as extraction shards run on separate machines: each folder holds its own crops
        manifest.write(frame.iloc[k::SHARDS], shard_path(folder, n_rows, k))
    synthetic_scores(frame).to_parquet(folder / f"{n_rows}" / "scores.parquet")
    return path


def shard_path(folder: Path, n_rows: int, k: int) -> Path:
    return folder / f"{n_rows}" / f"shard{k}" / "manifest.parquet"


def prepare_resume(folder: Path, n_videos: int) -> Path:
    """A folder dataset of `n_videos` empty video files and an output folder where each has its part file, as the
    code before issue 12 left a finished extraction (no record, no manifest)."""
    from recce.data import extract, extract_record

    base = folder / f"resume-{n_videos}"
    root, out = base / "root", base / "out"
    if out.is_dir():
        return base
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True)
    for v in range(n_videos):
        (root / ("real" if v % 6 == 0 else "fake") / f"v{v:07d}.mp4").touch()
    settings = extract.ExtractSettings(detector=extract.NO_DETECTOR)
    with extract_record.ExtractRecord(
        out / extract.PARTS_DIR, "manifest"
    ) as record:  # settings.json as a run writes it
        extract._check_settings(out, "folder", settings, record)
    shutil.rmtree(record.root / extract_record.ROWS_DIR, ignore_errors=True)  # the record is newer than this layout
    (record.root / extract_record.RECORD_FILE).unlink()
    items = extract.shard_items(extract.index_dataset("folder", root).items, None)
    crops = synthetic_manifest(n_videos * FRAMES_PER_VIDEO)
    crops["dataset"] = "folder"
    crops["video"] = np.repeat([item.video for item in items], FRAMES_PER_VIDEO)
    crops["path"] = "crops/folder/" + crops["video"] + "/" + crops["frame"].map("{:06d}.png".format)
    crops["label"] = np.repeat([item.label for item in items], FRAMES_PER_VIDEO)
    crops["detector"] = extract.NO_DETECTOR
    table = pa.Table.from_pandas(manifest.to_frame(crops), preserve_index=False)
    sampled = crops["frame"].iloc[:FRAMES_PER_VIDEO].tolist()
    for v, item in enumerate(items):
        metadata = {"source": str(item.source), "detector": extract.NO_DETECTOR, "sampled": sampled, "no_face": []}
        part = table.slice(v * FRAMES_PER_VIDEO, FRAMES_PER_VIDEO)  # as extract._write_part writes it
        part = part.replace_schema_metadata({**table.schema.metadata, extract.PART_METADATA_KEY: json.dumps(metadata)})
        extract.part_path(out, item).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, extract.part_path(out, item))
    return base


def prepare_dfdc(folder: Path, n_videos: int) -> Path:
    """A DFDC tree of `n_videos` empty clips: 4 % in test/ with labels.csv, the rest in 50 training parts."""
    root = folder / f"dfdc-{n_videos}"
    if (root / "test" / "labels.csv").is_file():
        return root
    n_test = round(n_videos * TEST_FRACTION)
    per_part = -(-(n_videos - n_test) // TRAIN_PARTS)
    rng = np.random.default_rng(0)
    for part in range(TRAIN_PARTS):
        clips = range(part * per_part, min((part + 1) * per_part, n_videos - n_test))
        folder_path = root / f"dfdc_train_part_{part}"
        folder_path.mkdir(parents=True)
        metadata = {}
        for clip in clips:
            name = f"{clip:010d}.mp4"
            (folder_path / name).touch()
            fake = rng.random() >= REAL_FRACTION
            metadata[name] = {"label": "FAKE" if fake else "REAL", "split": "train"}
            metadata[name] |= {"original": f"{clip - 1:010d}.mp4"} if fake else {}
        (folder_path / "metadata.json").write_text(json.dumps(metadata))
    (root / "test").mkdir()
    lines = ["filename,label"]
    for clip in range(n_test):
        (root / "test" / f"t{clip:09d}.mp4").touch()
        lines.append(f"t{clip:09d}.mp4,{int(rng.random() >= 0.5)}")
    (root / "test" / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------------------------------- baseline: the code before
def baseline_resume(root: Path, out: Path) -> int:
    """The resume before issue 12 with nothing left to do: index, a stat per video, every part read again."""
    from recce.data import extract

    items = extract.shard_items(extract.index_dataset("folder", root).items, None)
    todo = [item for item in items if not extract.part_path(out, item).is_file()]
    frames, no_face_rows, detectors = [], [], set()
    for item in items:
        path = extract.part_path(out, item)
        if not path.is_file():
            continue
        table = pq.read_table(path)
        metadata = json.loads(table.schema.metadata[extract.PART_METADATA_KEY])
        frames.append(table.to_pandas())
        detectors.add(metadata["detector"])
        no_face_rows.extend((item.dataset, item.split, item.video, i, item.source) for i in metadata["no_face"])
    combined = manifest.to_frame(pd.concat(frames, ignore_index=True) if frames else [])
    combined = combined.sort_values(["dataset", "split", "video", "frame"], kind="stable")
    manifest.write(combined, out / "manifest-baseline.parquet")
    extract._write_csv(out / "no_face-baseline.csv", ("dataset", "split", "video", "frame", "source"), no_face_rows)
    return len(todo)


def baseline_read(path: Path) -> pd.DataFrame:
    frame = manifest.to_frame(pd.read_parquet(path))
    root = path.resolve().parent
    frame["abspath"] = [str(root / p) for p in frame["path"]]
    return frame


def baseline_merge(paths: list[Path], out: Path) -> pd.DataFrame:
    out_root = out.resolve().parent
    frames = []
    for p in paths:
        frame = baseline_read(p)
        frame["path"] = [os.path.relpath(a, out_root) for a in frame["abspath"]]
        frames.append(frame.drop(columns="abspath"))
    merged = pd.concat(frames, ignore_index=True).drop_duplicates(subset=["path"], keep="first")
    merged = merged.sort_values(["dataset", "split", "video", "frame"], kind="stable")
    manifest.write(merged, out)
    return manifest.to_frame(merged)


def baseline_info(path: Path) -> str:
    frame = baseline_read(path)
    videos = frame.groupby("dataset", observed=True)["video"].nunique().sum()
    grouped = frame.groupby(["dataset", "split", "label", "method"], observed=True, sort=True)
    table = grouped.agg(crops=("path", "size"), videos=("video", "nunique")).reset_index()
    return f"{path}: {len(frame)} crops from {videos} videos\n{table.to_string(index=False)}"


def baseline_weighted_aucs(unit_weights: np.ndarray, unit_of_sample: np.ndarray, y: np.ndarray, s: np.ndarray):
    """The AUC of each resample, sorting the samples again for every chunk."""
    negatives = np.flatnonzero(y == 0)
    negatives = negatives[np.argsort(s[negatives], kind="stable")]
    positives = np.flatnonzero(y == 1)
    below = np.searchsorted(s[negatives], s[positives], side="left")
    through = np.searchsorted(s[negatives], s[positives], side="right")
    negative_weights = unit_weights[:, unit_of_sample[negatives]].astype(np.float64)
    cumulative = np.zeros((unit_weights.shape[0], negatives.size + 1))
    np.cumsum(negative_weights, axis=1, out=cumulative[:, 1:])
    positive_weights = unit_weights[:, unit_of_sample[positives]].astype(np.float64)
    wins = (positive_weights * (cumulative[:, below] + cumulative[:, through])).sum(axis=1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (positive_weights.sum(axis=1) * cumulative[:, -1])


def baseline_bootstrap(labels, scores, n_boot: int, seed: int, groups=None) -> tuple[float, float]:
    y, s = np.asarray(labels).astype(np.int8), np.asarray(scores, dtype=np.float64)
    if not 0 < int(y.sum()) < y.size:
        return math.nan, math.nan
    if groups is None:
        unit_of_sample = np.arange(y.size)
    else:
        unit_of_sample = pd.factorize(np.asarray(groups, dtype=object).ravel(), use_na_sentinel=False)[0]
    n_units = int(unit_of_sample.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, metrics.BOOTSTRAP_CELLS_PER_CHUNK // max(y.size, n_units))
    aucs = []
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        draws = rng.integers(0, n_units, size=(rows, n_units)) + n_units * np.arange(rows)[:, None]
        unit_counts = np.bincount(draws.ravel(), minlength=rows * n_units).reshape(rows, n_units)
        aucs.append(baseline_weighted_aucs(unit_counts, unit_of_sample, y, s))
    values = np.concatenate(aucs)
    values = values[np.isfinite(values)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def baseline_evaluate(table: pd.DataFrame, n_boot: int, seed: int = 0) -> dict:
    """Per method: copy all reals and that method's fakes, group by video again, bootstrap with re-sorting."""

    def summary(part: pd.DataFrame, groups) -> dict:
        result = metrics.binary_metrics(part["label"].to_numpy(), part["score"].to_numpy(dtype=np.float64))
        result["auc_ci"] = list(baseline_bootstrap(part["label"], part["score"], n_boot, seed, groups))
        return result

    def frame_and_video(part: pd.DataFrame) -> dict:
        keys = part.groupby(list(metrics.VIDEO_KEY), sort=False, observed=True, dropna=False).ngroup().to_numpy()
        return {"frame": summary(part, keys), "video": summary(metrics.aggregate_videos(part), None)}

    table = table.reset_index(drop=True)
    result = frame_and_video(table)
    is_fake = table["label"].to_numpy() == 1
    reals = table[~is_fake]
    result["per_method"] = {
        str(method): frame_and_video(pd.concat([reals, fakes]))
        for method, fakes in table[is_fake].groupby("method", sort=True, observed=True)
    }
    return result


def baseline_dataset(path: Path) -> tuple[object, int, int]:
    """The former ManifestDataset's state (the selected frame plus fixed-width numpy strings), its rows and bytes."""
    frame = manifest.select(baseline_read(path), splits=["train"])
    arrays = [frame["abspath"].to_numpy(dtype=str), frame["path"].to_numpy(dtype=str)]
    arrays.append(frame["label"].to_numpy(dtype=np.int64))
    arrays += [frame[c].to_numpy(dtype=int if c == "frame" else str) for c in META]
    held = int(frame.memory_usage(deep=True).sum()) + sum(a.nbytes for a in arrays)
    return (frame, arrays), len(frame), held


META = ("dataset", "split", "video", "frame", "method", "compression")


# --------------------------------------------------------------------------------------------- measurement
def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def child(step: str, impl: str, folder: Path, n_rows: int, n_boot: int) -> dict:
    """One step in this fresh process: time, peak RSS growth and RSS kept after it, plus what it produced."""
    path = folder / f"{n_rows}" / "manifest.parquet"
    out = folder / f"{n_rows}" / f"merged-{impl}.parquet"
    shards = [shard_path(folder, n_rows, k) for k in range(SHARDS)]
    scores = pd.read_parquet(folder / f"{n_rows}" / "scores.parquet") if step == "evaluate" else None
    if step == "dataset":
        from recce.data import rows as compact
        from recce.data.dataset import ManifestDataset  # imports torch: before the measurement

        cache = folder / f"{n_rows}" / "rows-train.arrow"
        train = compact.Selection.of(splits=["train"])
    if step == "index":
        from recce.data import indexers

        calls = [0]
        stat = os.stat

        def counted(*args, **kwargs):
            calls[0] += 1
            return stat(*args, **kwargs)

        root, shard = folder / f"dfdc-{n_rows}", (1, n_boot)  # n_boot carries the shard count here
    if step == "resume":
        from recce.data import extract  # imports torch: before the measurement

        base = folder / f"resume-{n_rows}"
    from recce.commands import manifest as manifest_command

    extra: dict = {}

    def run() -> object:
        if step == "read":
            return manifest.read(path) if impl == "ours" else baseline_read(path)
        if step == "merge":
            return manifest.merge(shards, out) if impl == "ours" else baseline_merge(shards, out)
        if step == "info":
            if impl == "baseline":
                return baseline_info(path)  # the text the command printed
            with open(os.devnull, "w") as sink:
                stdout, sys.stdout = sys.stdout, sink
                try:
                    return manifest_command.run(argparse.Namespace(action="info", manifest=str(path)))
                finally:
                    sys.stdout = stdout
        if step == "evaluate":
            result = (
                metrics.evaluate_scores(scores, n_boot=n_boot) if impl == "ours" else baseline_evaluate(scores, n_boot)
            )
            extra["result"] = json.dumps(metrics.json_safe(result), sort_keys=True)
            extra["frame_auc_ci"] = result["frame"]["auc_ci"]
            return result
        if step == "resume":
            if impl == "baseline":
                extra["todo"] = baseline_resume(base / "root", base / "out")
                return None
            settings = extract.ExtractSettings(detector=extract.NO_DETECTOR)
            summary = extract.extract("folder", base / "root", base / "out", settings, progress=False)
            extra.update(todo=summary.done + summary.failed, manifest_rows=summary.collected.rows)
            return summary
        if step == "index":
            os.stat = counted
            try:
                if impl == "baseline":
                    items = indexers.shard_items(indexers.index_dataset("dfdc", root).items, shard)
                else:
                    items = indexers.shard_items(indexers.index_dataset("dfdc", root, shard=shard).items, None)
            finally:
                os.stat = stat
            extra.update(stats=calls[0], items=[item.video for item in items])
            return items
        if step == "dataset":
            if impl != "baseline":
                if impl == "ours":
                    dataset = ManifestDataset(path, splits=["train"])
                elif impl == "read all":
                    dataset = ManifestDataset(manifest.read(path), splits=["train"])
                else:
                    dataset = ManifestDataset(compact.shared_rows(path, cache, train))
                extra.update(rows=len(dataset), held=dataset.nbytes)
                return dataset
            state, rows, held = baseline_dataset(path)
            extra.update(rows=rows, held=held)
            return state
        raise ValueError(step)

    gc.collect()
    pa.default_memory_pool().release_unused()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    kept_alive = run()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - before
    gc.collect()
    pa.default_memory_pool().release_unused()
    kept = _status("VmRSS") - before
    del kept_alive
    return {"seconds": seconds, "peak": peak, "kept": kept, **extra}


def _private() -> dict[str, int]:
    """This process's private (USS) and proportional (PSS) resident bytes."""
    values = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[name] = int(rest.split()[0]) * 1024
    return {"uss": values["Private_Clean"] + values["Private_Dirty"], "pss": values["Pss"]}


def rank_child(impl: str, folder: Path, n_rows: int, rank: int, world: int, meeting: Path) -> dict:
    """One process of a simulated distributed start-up: its private memory growth with all `world` alive."""
    from recce.data import rows
    from recce.data.dataset import ManifestDataset
    from recce.engine.sampler import EpochSampler

    def meet(name: str) -> None:  # a barrier through files: every process measures while all are alive
        (meeting / f"{name}-{rank}").touch()
        while len(list(meeting.glob(f"{name}-*"))) < world:
            time.sleep(0.05)

    path = folder / f"{n_rows}" / "manifest.parquet"
    meet("imported")
    before = _private()
    start = time.perf_counter()
    if impl == "shared":
        cache = folder / f"{n_rows}" / "rows-train.arrow"
        dataset = ManifestDataset(rows.shared_rows(path, cache, rows.Selection.of(splits=["train"])))
    else:
        dataset = ManifestDataset(path, splits=["train"])
    sampler = EpochSampler(dataset.labels, 32, rank=rank, world_size=world)
    touched = sum(len(dataset.path(row)) + int(dataset.labels[row]) for row, _ in sampler)  # an epoch's share
    seconds = time.perf_counter() - start
    del sampler
    gc.collect()
    pa.default_memory_pool().release_unused()
    meet("touched")
    after = _private()
    meet("measured")
    return {
        "seconds": seconds,
        "uss": after["uss"] - before["uss"],
        "pss": after["pss"] - before["pss"],
        "rows": len(dataset),
        "touched": touched,
    }


def measure_ranks(impl: str, folder: Path, n_rows: int, world: int) -> dict:
    """`world` processes at once; the mean of their results (the shared copy built first, as rank 0 does)."""
    with tempfile.TemporaryDirectory(prefix="recce-ranks-") as meeting:
        command = [sys.executable, __file__, "--rank-child", impl, str(folder), str(n_rows), str(world), meeting]
        processes = [subprocess.Popen([*command, str(r)], stdout=subprocess.PIPE, text=True) for r in range(world)]
        outputs = [p.communicate()[0] for p in processes]
    if any(p.returncode for p in processes):
        raise RuntimeError(f"ranks {impl} at {n_rows} rows failed")
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    mean = {k: float(np.mean([r[k] for r in results])) for k in ("seconds", "uss", "pss")}
    return {**mean, "peak": 0, "kept": None, "rows": results[0]["rows"], "world": world}


def measure(step: str, impl: str, folder: Path, n_rows: int, n_boot: int) -> dict:
    command = [sys.executable, __file__, "--child", step, impl, str(folder), str(n_rows), str(n_boot)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{step} {impl} at {n_rows} rows failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# Each prints its own peak RSS when it exits: after exec a process's VmHWM is its own, while the rusage that wait4
# reports also counts the memory the child shared with this process before exec.
PEAK_AT_EXIT = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('peak', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0],"
    " file=sys.stderr))\n"
)
RECCE_CLI = PEAK_AT_EXIT + "import runpy\nsys.argv = ['recce', 'manifest', 'info', sys.argv[1]]\n"
RECCE_CLI += "runpy.run_module('recce', run_name='__main__')\n"
MODULE_ALONE = (
    PEAK_AT_EXIT
    + """import argparse
from recce.commands import manifest
parser = argparse.ArgumentParser()
manifest.add_arguments(parser)
sys.exit(manifest.run(parser.parse_args(["info", sys.argv[1]])))
"""
)


def measure_command(folder: Path, n_rows: int, impl: str) -> dict:
    """`manifest info` in a new process: wall time and that process's peak RSS.

    "recce CLI" is `python -m recce manifest info M` as a user runs it; "module alone" imports only
    `recce.commands.manifest`, what a CLI that imports just the chosen command would load.
    """
    path = folder / f"{n_rows}" / "manifest.parquet"
    code = RECCE_CLI if impl == "recce CLI" else MODULE_ALONE
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"recce manifest info failed: {result.stderr.decode()[-2000:]}")
    peak_kib = int(result.stderr.decode().split("peak VmHWM:")[-1].split()[0])
    return {"seconds": seconds, "peak": peak_kib * 1024, "kept": None}


# ------------------------------------------------------------------------------------------------- report
def exponent(rows: list[dict], row: dict) -> float | None:
    """Slope of log(time) against log(rows) from the next smaller size of the same step and implementation."""
    smaller = [r for r in rows if (r["step"], r["impl"]) == (row["step"], row["impl"]) and r["rows"] < row["rows"]]
    if not smaller:
        return None
    previous = max(smaller, key=lambda r: r["rows"])
    return math.log(row["seconds"] / previous["seconds"]) / math.log(row["rows"] / previous["rows"])


def table(rows: list[dict]) -> str:
    header = (
        "| step | implementation | rows | time (s) | exponent | peak (MB) | peak (B/row) | kept (B/row) | held (B/row) "
        "| private a process (B/row) | check |"
    )
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        growth = exponent(rows, row)
        per_row = row.get("dataset_rows") or row["rows"]
        ranks = row["step"] == "ranks"
        cells = [
            row["step"],
            row["impl"] + (f", {row['world']} processes" if ranks else ""),
            f"{row['rows']:,}",
            f"{row['seconds']:.2f}",
            "" if growth is None else f"{growth:.2f}",
            "" if ranks else f"{row['peak'] / 2**20:,.0f}",
            f"{row['peak'] / per_row:.0f}" if row["step"] == "dataset" else "",
            f"{row['kept'] / per_row:.0f}" if row["step"] == "dataset" else "",
            f"{row['held'] / per_row:.0f}" if "held" in row else "",
            f"{row['uss'] / per_row:.1f} (PSS {row['pss'] / per_row:.1f})" if ranks else "",
            row.get("check", ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def configuration(args: argparse.Namespace, n_boot: int) -> str:
    versions = f"numpy {np.__version__}, pandas {pd.__version__}, pyarrow {pa.__version__}"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs (load {load}), Python {platform.python_version()}, {versions}; "
        f"sizes {', '.join(f'{n:,}' for n in args.sizes)} rows, {n_boot} bootstrap resamples, "
        f"baseline {'off' if args.no_baseline else f'up to {args.baseline_max_rows:,} rows'}"
        + (f"; resume at {', '.join(f'{n:,}' for n in args.resume_videos)} videos" if "resume" in args.steps else "")
    )


def check(step: str, results: dict[str, dict], folder: Path, n_rows: int) -> str:
    """Does this package give what the baseline gave?"""
    if step == "evaluate":
        same = results["ours"]["result"] == results["baseline"]["result"]
        return "metrics and CIs identical to baseline" if same else "DIFFERS from baseline"
    if step == "index":
        same = results["ours"]["items"] == results["baseline"]["items"]
        return f"{len(results['ours']['items']):,} items, {'same' if same else 'DIFFERENT'} items as baseline"
    if step == "merge":
        merged = [pd.read_parquet(folder / f"{n_rows}" / f"merged-{impl}.parquet") for impl in ("ours", "baseline")]
        return "same merged manifest" if merged[0].equals(merged[1]) else "DIFFERS from baseline"
    if step == "dataset":
        peak = results["read all"]["peak"] / results["ours"]["peak"]
        return f"{results['baseline']['held'] / results['ours']['held']:.0f}x fewer bytes held; peak {peak:.1f}x lower"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--huge", action="store_true", help="add 4M rows")
    steps = [*STEPS, "info-cli", "resume", "index"]
    parser.add_argument("--steps", nargs="+", choices=steps, default=[*STEPS, "info-cli"])
    parser.add_argument("--ranks", type=int, default=4, help="processes of the `ranks` step")
    parser.add_argument("--index-videos", type=int, nargs="+", default=[119_000], help="sizes of `index`")
    parser.add_argument("--index-shards", type=int, default=8, help="N of the shard 1/N that `index` measures")
    parser.add_argument("--resume-videos", type=int, nargs="+", default=[10_000, 100_000], help="sizes of `resume`")
    parser.add_argument("--no-baseline", action="store_true", help="measure this package only")
    parser.add_argument("--baseline-max-rows", type=int, default=1_000_000, help="largest size the baseline runs at")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    parser.add_argument("--data", type=Path, help="folder for the synthetic manifests (kept; default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--rank-child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_child:
        impl, folder, n_rows, world, meeting, rank = args.rank_child
        print(json.dumps(rank_child(impl, Path(folder), int(n_rows), int(rank), int(world), Path(meeting))))
        return 0
    if args.child:
        step, impl, folder, n_rows, n_boot = args.child
        print(json.dumps(child(step, impl, Path(folder), int(n_rows), int(n_boot))))
        return 0
    args.sizes = sorted(set(args.sizes) | ({4_000_000} if args.huge else set()))
    print(configuration(args, args.n_boot), flush=True)
    with tempfile.TemporaryDirectory(prefix="recce-scale-") as temporary:
        folder = args.data or Path(temporary)
        rows: list[dict] = []
        manifest_steps = [step for step in args.steps if step not in ("resume", "index")]
        if "index" in args.steps:
            for n_videos in sorted(args.index_videos):
                prepare_dfdc(folder, n_videos)
                results = {}
                for impl in ("ours", "baseline"):
                    results[impl] = measure("index", impl, folder, n_videos, args.index_shards)
                    result = {k: v for k, v in results[impl].items() if k != "items"}
                    rows.append({"step": "index", "impl": f"{impl}, shard 1/{args.index_shards}", "rows": n_videos})
                    rows[-1].update(result, check=f"{result['stats']:,} stats")
                    print(f"index     {impl:12s} {n_videos:>9,} videos {result['seconds']:8.2f} s", flush=True)
                rows[-2]["check"] += "; " + check("index", results, folder, n_videos)
        for n_rows in args.sizes if manifest_steps else []:
            prepare(folder, n_rows)
            for step in manifest_steps:
                impls = {"dataset": list(DATASET_IMPLS), "info-cli": ["recce CLI", "module alone"]}.get(step, ["ours"])
                if step == "ranks":
                    impls = list(RANK_IMPLS)
                elif step != "info-cli" and not args.no_baseline and n_rows <= args.baseline_max_rows:
                    impls.append("baseline")
                results = {}
                cache = folder / f"{n_rows}" / "rows-train.arrow"
                for impl in impls:
                    if impl == "ours (shared, build)":
                        cache.unlink(missing_ok=True)
                    if step == "info-cli":
                        results[impl] = measure_command(folder, n_rows, impl)
                    elif step == "ranks":
                        if impl == "shared" and not cache.is_file():  # written by the first process of a run
                            measure("dataset", "ours (shared, build)", folder, n_rows, args.n_boot)
                        results[impl] = measure_ranks(impl, folder, n_rows, args.ranks)
                    else:
                        results[impl] = measure(step, impl, folder, n_rows, args.n_boot)
                    result = {k: v for k, v in results[impl].items() if k != "result"}
                    rows.append(
                        {"step": step, "impl": impl, "rows": n_rows, **result, "dataset_rows": result.get("rows")}
                    )
                    print(f"{step:9s} {impl:12s} {n_rows:>9,} rows {result['seconds']:8.2f} s", flush=True)
                if "baseline" in results:
                    rows[-len(impls)]["check"] = check(step, results, folder, n_rows)
        if "resume" in args.steps:
            for n_videos in sorted(args.resume_videos):
                prepare_resume(folder, n_videos)
                for impl in RESUME_IMPLS if not args.no_baseline else RESUME_IMPLS[1:]:
                    result = measure("resume", impl, folder, n_videos, args.n_boot)
                    result["check"] = f"{result['todo']} redone" + (
                        f", {result['manifest_rows']:,} manifest rows" if "manifest_rows" in result else ""
                    )
                    if impl == "ours" and not args.no_baseline:
                        out = folder / f"resume-{n_videos}" / "out"
                        same = pd.read_parquet(out / "manifest.parquet").equals(
                            pd.read_parquet(out / "manifest-baseline.parquet")
                        )
                        result["check"] += ", same manifest as baseline" if same else ", manifest DIFFERS from baseline"
                    rows.append({"step": "resume", "impl": impl, "rows": n_videos, **result})
                    print(f"resume    {impl:16s} {n_videos:>9,} videos {result['seconds']:8.2f} s", flush=True)
        print()
        print(table(rows))
        if args.json:
            args.json.write_text(
                json.dumps({"configuration": configuration(args, args.n_boot), "rows": rows}, indent=1)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
