"""The paper's evaluation protocols over a manifest: within/cross-dataset, cross-manipulation and robustness.

- `evaluate`: one checkpoint on the selected test frames, per test dataset (spec §3 protocols 1-3, seed Table 3).
- `cross_manipulation`: one checkpoint per training method, each scoring the test split once; cell (train, test)
  is the AUC of all test reals plus that method's fakes (seed Table 4).
- `robustness`: the test split re-scored under each perturbation and level, applied to the crops before the
  resize and seeded per image (seed Table 5).

Each writes its tables (Markdown, CSV/JSON), the per-frame scores and a figure under an output folder; every file
is written under a temporary name and renamed, so a killed run leaves no half-written result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn import metrics as sk_metrics
from torch import nn

from recce import checkpoints
from recce.catalogue import file_sha256
from recce.data import manifest, packed
from recce.data.dataset import ManifestDataset
from recce.data.perturb import LEVELS, SEED_TABLE5, SEQUENCE_KINDS, Perturbation, perturb_sequence, stable_seed
from recce.detectors import Detector, Preprocess, detector_class
from recce.engine.inference import preprocess_of, score_frames
from recce.metrics import evaluate_scores, json_safe

FFPP_ABBREVIATIONS: dict[str, str] = {
    "DF": "Deepfakes",
    "F2F": "Face2Face",
    "FS": "FaceSwap",
    "NT": "NeuralTextures",
}
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("auc", "AUC"),
    ("eer", "EER"),
    ("acc", "ACC"),
    ("ap", "AP"),
    ("log_loss", "LogLoss"),
)
CROSS_AVERAGE = "Cross Avg."
AVERAGE = "Avg."
# The official tester resizes to the *test* dataset's size: 224 for WildDeepfake, 299 for the others. The rule is
# applied to checkpoints trained at one of those sizes with a plain resize (RECCE's recipe and its baselines);
# detectors with their own recipe (a resize-then-crop, another size) keep it. `--size` overrides both.
OFFICIAL_TEST_SIZES: dict[str, int] = {"wilddeepfake": 224}
OFFICIAL_DEFAULT_TEST_SIZE = 299


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message names the file or option and the problem."""


@dataclass(frozen=True)
class Selection:
    """Which manifest rows are evaluated (a `methods` filter keeps every real row)."""

    split: str = "test"
    datasets: Sequence[str] | None = None
    methods: Sequence[str] | None = None
    compressions: Sequence[str] | None = None


@dataclass(frozen=True)
class ScoringOptions:
    """How frames are scored and summarised."""

    batch_size: int = 64
    device: str = "auto"
    amp: str = "none"  # fp32, as the official tester
    workers: int = 2
    size: int | None = None  # input side; None = the checkpoint's input_size
    progress: bool = True
    aggregate: str = "mean"  # video pooling of frame scores
    n_boot: int = 1000  # bootstrap resamples of the AUC confidence interval
    seed: int = 0  # bootstrap seed


class SeededPerturbation:
    """A Table 5 perturbation whose randomness depends only on the image, the type and the level.

    ManifestDataset passes a seed derived from the crop's manifest path; it is mixed with the type and level so
    every (image, type, level) draws its own stream, identical in every run and worker.
    """

    def __init__(self, kind: str, level: int) -> None:
        self.perturbation = Perturbation(kind, level)

    @property
    def kind(self) -> str:
        return self.perturbation.kind

    @property
    def level(self) -> int:
        return self.perturbation.level

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        return self.perturbation(image, stable_seed(seed, self.kind, self.level))

    def __repr__(self) -> str:
        return f"SeededPerturbation(kind={self.kind!r}, level={self.level})"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside `path` (same suffix) to write to; renamed onto `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_json(path: Path, data: object) -> None:
    _write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def _write_scores(table: pd.DataFrame, stem: Path, csv: bool = False) -> None:
    with atomic_path(stem.with_suffix(".parquet")) as tmp:
        table.to_parquet(tmp, index=False)
    if csv:
        with atomic_path(stem.with_suffix(".csv")) as tmp:
            table.to_csv(tmp, index=False)


def _save_figure(figure: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


def load_detector(path: str | os.PathLike, size: int | None = None) -> tuple[Detector, Preprocess]:
    """The checkpoint's detector (on the CPU, eval mode) and the preprocessing it is evaluated with."""
    if not Path(path).is_file():
        raise EvaluationError(f"{path}: checkpoint not found")
    model = checkpoints.load(path)
    return model, preprocess_of(model, size)


def test_preprocess(trained: Preprocess, dataset: str, size: int | None = None) -> Preprocess:
    """The preprocessing a test dataset is scored with: `size` when given, else the official tester's rule."""
    if size is not None:
        return trained.at_size(size)
    if trained.resize is None and trained.input_size in (*OFFICIAL_TEST_SIZES.values(), OFFICIAL_DEFAULT_TEST_SIZE):
        return trained.at_size(OFFICIAL_TEST_SIZES.get(dataset, OFFICIAL_DEFAULT_TEST_SIZE))
    return trained


def checkpoint_record(path: str | os.PathLike) -> dict:
    """What `recce tables` needs to know about a checkpoint: its hash and the provenance its training recorded."""
    metadata = checkpoints.read_metadata(path)
    provenance = metadata.get("provenance") or {}
    cls = detector_class(metadata["detector"])
    values = {**dataclasses.asdict(cls.Loss()), **metadata["config"]}
    return {
        "checkpoint": str(path),
        "checkpoint_sha256": file_sha256(path),
        "detector": metadata["detector"],
        "detector_source": cls.source,
        "choices": provenance.get("choices") or {name: values[name] for name in cls.choices if name in values},
        "detector_config": metadata.get("config"),
        "trained_on": provenance.get("trained_on"),  # None: not trained by recce (converted weights)
        "trained_methods": provenance.get("methods"),
        "train_config": provenance.get("train_config"),
        "trained_input_size": metadata["preprocess"].input_size,
    }


def test_rows(frame: pd.DataFrame) -> pd.Series:
    """Each crop's test row: its dataset, or `dataset/compression` where the selection holds the same videos at
    several compressions (FF++ c23 and c40 are two test sets, never pooled). A dataset whose videos each have
    one compression (the synthetic benchmark's JPEG qualities) stays one row."""
    dataset = frame["dataset"].astype(str)
    compression = frame["compression"].astype(str)
    per_video = compression.groupby([dataset, frame["video"].astype(str)]).transform("nunique")
    several = per_video.groupby(dataset).transform("max") > 1
    return dataset.where(~several, dataset + "/" + compression)


def excluded_datasets(frame: pd.DataFrame, chosen: pd.DataFrame, selection: Selection) -> dict[str, str]:
    """Datasets of the split that the method or compression filters removed entirely, with the reason."""
    split = manifest.select(frame, splits=[selection.split], datasets=selection.datasets)
    kept = set(chosen["dataset"].astype(str))
    reasons = {}
    for dataset, rows in split.groupby("dataset", sort=True, observed=True):
        if str(dataset) in kept:
            continue
        has = sorted(set(rows["compression"].astype(str)) - {""}) or ["none"]
        if selection.compressions and manifest.select(rows, compressions=selection.compressions).empty:
            reasons[str(dataset)] = (
                f"no crops with compression {' '.join(selection.compressions)} (it has: {', '.join(has)})"
            )
        else:
            reasons[str(dataset)] = f"no crops of methods {' '.join(selection.methods or [])}"
    return reasons


def select_frames(
    manifest_path: str | os.PathLike, selection: Selection, excluded: dict[str, str] | None = None
) -> pd.DataFrame:
    """The selected rows of a manifest, refusing an empty selection or crops that are not on disk.

    Datasets of the split that the filters remove entirely are put into `excluded` with the reason.
    """
    frame = manifest.read(manifest_path)
    chosen = manifest.select(
        frame,
        splits=[selection.split],
        datasets=selection.datasets,
        methods=selection.methods,
        compressions=selection.compressions,
    )
    if excluded is not None:
        excluded.update(excluded_datasets(frame, chosen, selection))
    if chosen.empty:
        filters = {
            "split": [selection.split],
            "datasets": selection.datasets,
            "methods": selection.methods,
            "compressions": selection.compressions,
        }
        given = ", ".join(f"{k}={' '.join(v)}" for k, v in filters.items() if v)
        raise EvaluationError(f"{manifest_path}: no rows match ({given})")
    missing = packed.missing_crops(chosen)
    if missing:
        raise EvaluationError(f"{manifest_path}: {len(missing)} of {len(chosen)} crops are missing, e.g. {missing[0]}")
    return chosen


def _require_both_classes(frame: pd.DataFrame, manifest_path: str | os.PathLike, split: str) -> None:
    for dataset, rows in frame.groupby("dataset", sort=True, observed=True):
        n_fake = int((rows["label"] == 1).sum())
        if n_fake in (0, len(rows)):
            only = "real" if n_fake == 0 else "fake"
            raise EvaluationError(
                f"{manifest_path}: split {split!r} of dataset {dataset!r} holds only {only} crops "
                f"({len(rows)}); AUC needs both classes"
            )


def _single_dataset(frame: pd.DataFrame, manifest_path: str | os.PathLike, protocol: str) -> str:
    datasets = sorted(frame["dataset"].unique())
    if len(datasets) != 1:
        raise EvaluationError(
            f"{manifest_path}: the {protocol} protocol needs one test dataset, the selection holds "
            f"{', '.join(datasets)}; pick one with --datasets"
        )
    test_sets = sorted(test_rows(frame).unique())
    if len(test_sets) != 1:
        raise EvaluationError(
            f"{manifest_path}: the {protocol} protocol needs one test set, the selection holds "
            f"{', '.join(test_sets)}; pick one compression with --compressions"
        )
    return str(datasets[0])


class SequencePerturbedDataset(ManifestDataset):
    """Crops perturbed together with the selected crops of their video, in frame order (DeeperForensics' video
    compression encodes whole videos). Rows of a video should be adjacent, so each DataLoader worker encodes a
    video once; the last video's output is kept."""

    def __init__(self, frame: pd.DataFrame, *, preprocess: Preprocess, kind: str, level: int) -> None:
        super().__init__(frame, preprocess=preprocess)
        self.kind, self.level = kind, level
        videos = self.frame["dataset"].astype(str) + "\x1f" + self.frame["video"].astype(str)
        order = np.lexsort((self.frame["frame"].to_numpy(), videos.to_numpy()))
        codes = pd.factorize(videos)[0]
        self._members = [order[codes[order] == code] for code in range(codes.max() + 1)]
        self._video_of = codes
        self._cached: tuple[int, dict[int, np.ndarray]] = (-1, {})

    def load_image(self, index: int) -> np.ndarray:
        video = int(self._video_of[index])
        if self._cached[0] != video:
            members = self._members[video]
            frames = perturb_sequence(
                [ManifestDataset.load_image(self, int(i)) for i in members], self.kind, self.level
            )
            self._cached = (video, dict(zip(members.tolist(), frames, strict=True)))
        return self._cached[1][index]


def _scored(
    model: nn.Module,
    frame: pd.DataFrame,
    preprocess: Preprocess,
    options: ScoringOptions,
    perturbation: SeededPerturbation | None = None,
    desc: str = "scoring",
) -> pd.DataFrame:
    if perturbation is not None and perturbation.kind in SEQUENCE_KINDS:
        dataset = SequencePerturbedDataset(
            frame, preprocess=preprocess, kind=perturbation.kind, level=perturbation.level
        )
    else:
        dataset = ManifestDataset(frame, preprocess=preprocess, perturbation=perturbation)
    return score_frames(
        model,
        dataset,
        batch_size=options.batch_size,
        device=options.device,
        amp=options.amp,
        workers=options.workers,
        progress=options.progress,
        desc=desc,
    )


def _pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _number(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _metric_cells(summary: Mapping[str, float]) -> list[str]:
    return [_number(summary[key]) if key == "log_loss" else _pct(summary[key]) for key, _ in METRIC_COLUMNS]


def _ci(summary: Mapping) -> str:
    low, high = summary["auc_ci"]
    return f"[{_pct(low)}, {_pct(high)}]"


def _metrics_markdown(report: Mapping, label: str) -> str:
    per_dataset = report["datasets"]
    names = [name for _, name in METRIC_COLUMNS]
    detail_header = ["Test set", *[f"{n} (frame)" for n in names], *[f"{n} (video)" for n in names]]
    detail_header += ["AUC 95% CI (frame)", "frames", "videos", "input (px)"]
    detail = [
        [
            dataset,
            *_metric_cells(result["frame"]),
            *_metric_cells(result["video"]),
            _ci(result["frame"]),
            str(result["frame"]["n"]),
            str(result["video"]["n"]),
            str(result["input_size"]),
        ]
        for dataset, result in per_dataset.items()
    ]
    summary_header = ["Train", *[f"{d} {m}" for d in per_dataset for m in ("AUC", "EER")]]
    summary = [[label, *[_pct(r["frame"][m]) for r in per_dataset.values() for m in ("auc", "eer")]]]
    method_rows = [
        [dataset, method, _pct(result["frame"]["auc"]), _pct(result["video"]["auc"]), str(result["frame"]["n_fake"])]
        for dataset, by_dataset in per_dataset.items()
        for method, result in by_dataset["per_method"].items()
    ]
    parts = [
        f"# Evaluation: {label}\n",
        f"Detector `{report['detector']}` ({report['detector_source']}), checkpoint `{report['checkpoint']}` "
        f"(SHA-256 {report['checkpoint_sha256'][:12]}…), split `{report['split']}`, each test set at the input size in "
        f"its row, video score = {report['aggregate']} of frame scores. AUC, EER, ACC and AP in %; ACC at P(fake) "
        ">= 0.5.\n",
        *(
            [f"The detector's own choices (no reference decides them): {json.dumps(report['choices'])}.\n"]
            if report["choices"]
            else []
        ),
        *[f"Left out: `{name}`: {reason}.\n" for name, reason in report["excluded"].items()],
        "## Per test set\n",
        _markdown_table(detail_header, detail),
        "## Cross-dataset summary (frame level, seed Table 3 layout)\n",
        _markdown_table(summary_header, summary),
        "## Per manipulation (all reals + that method's fakes)\n",
        _markdown_table(["Test set", "Method", "AUC (frame)", "AUC (video)", "fake frames"], method_rows),
    ]
    return "\n".join(parts)


def _roc_curves(scores: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One curve per test dataset; for a single dataset with several methods, also one per method (+ all reals)."""
    curves = [(str(dataset), rows) for dataset, rows in scores.groupby("dataset", sort=True, observed=True)]
    if len(curves) == 1:
        rows = curves[0][1]
        reals, fakes = rows[rows["label"] == 0], rows[rows["label"] == 1]
        methods = sorted(fakes["method"].unique())
        if len(methods) > 1:
            curves += [(f"  {m}", pd.concat([reals, fakes[fakes["method"] == m]])) for m in methods]
    return curves


def _roc_figure(scores: pd.DataFrame, label: str) -> Figure:
    figure = Figure(figsize=(5.5, 5))
    axes = figure.add_subplot()
    for name, rows in _roc_curves(scores):
        fpr, tpr, _ = sk_metrics.roc_curve(rows["label"], rows["score"])
        style = "--" if name.startswith(" ") else "-"
        axes.plot(fpr, tpr, style, label=f"{name.strip()} (AUC = {sk_metrics.auc(fpr, tpr):.4f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, frame level: {label}")
    axes.set(xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def evaluate(
    checkpoint: str | os.PathLike,
    manifest_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    selection: Selection = Selection(),
    options: ScoringOptions = ScoringOptions(),
    label: str | None = None,
) -> dict:
    """Score every selected frame and write scores, per-test-set metrics, metrics.md and roc.png under `out`.

    Test sets are the datasets, with FF++'s compressions apart (`ffpp/c23`, `ffpp/c40`); each is scored at the
    official tester's size for it (`test_preprocess`) unless `options.size` says otherwise. Datasets that the
    filters removed entirely are reported under `excluded` with the reason.
    """
    out = Path(out)
    excluded: dict[str, str] = {}
    frame = select_frames(manifest_path, selection, excluded)
    _require_both_classes(frame, manifest_path, selection.split)
    model, trained = load_detector(checkpoint)
    preprocess_by_dataset = {
        str(dataset): test_preprocess(trained, str(dataset), options.size) for dataset in frame["dataset"].unique()
    }
    parts = []
    for preprocess in dict.fromkeys(preprocess_by_dataset.values()):
        names = [name for name, p in preprocess_by_dataset.items() if p == preprocess]
        rows = frame[frame["dataset"].astype(str).isin(names)]
        parts.append(_scored(model, rows, preprocess, options, desc=f"scoring at {preprocess.input_size} px"))
    scores = pd.concat(parts, ignore_index=True)
    scores["test_set"] = test_rows(scores)
    label = label or Path(checkpoint).stem
    results = {}
    for test_set, rows in scores.groupby("test_set", sort=True, observed=True):
        dataset = str(rows["dataset"].iloc[0])
        result = evaluate_scores(rows, options.aggregate, options.n_boot, options.seed)
        compressions = sorted(set(rows["compression"].astype(str)) - {""})
        results[str(test_set)] = {
            "dataset": dataset,
            "compressions": compressions,
            "input_size": preprocess_by_dataset[dataset].input_size,
            **result,
        }
    report = {
        "label": label,
        "protocol": "dataset",
        **checkpoint_record(checkpoint),
        "manifest": str(manifest_path),
        "split": selection.split,
        "filters": {
            "datasets": selection.datasets,
            "methods": selection.methods,
            "compressions": selection.compressions,
        },
        "input_size": trained.input_size if options.size is None else options.size,
        "preprocess": trained.to_dict(),
        "input_sizes": {name: p.input_size for name, p in sorted(preprocess_by_dataset.items())},
        "amp": options.amp,
        "aggregate": options.aggregate,
        "n_boot": options.n_boot,
        "excluded": excluded,
        "datasets": results,
    }
    _write_scores(scores, out / "scores", csv=True)
    _write_json(out / "metrics.json", report)
    _write_text(out / "metrics.md", _metrics_markdown(json_safe(report), label))
    _save_figure(_roc_figure(scores, label), out / "roc.png")
    return report


def resolve_method(key: str, fake_methods: Sequence[str]) -> str:
    """The manifest's method name for a key: the name itself (any case) or an FF++ abbreviation (DF, F2F, FS, NT)."""
    by_lower = {method.lower(): method for method in fake_methods}
    for candidate in (key, FFPP_ABBREVIATIONS.get(key.upper(), key)):
        if candidate.lower() in by_lower:
            return by_lower[candidate.lower()]
    raise EvaluationError(
        f"method {key!r} has no fakes in the selection; its fake methods are {', '.join(sorted(fake_methods))}"
    )


def _heatmap(table: pd.DataFrame, title: str) -> Figure:
    keys = list(table.index)
    values = table[keys].to_numpy(dtype=float) * 100
    figure = Figure(figsize=(1.4 * len(keys) + 2.5, 1.1 * len(keys) + 1.5))
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="viridis", vmin=min(50.0, np.nanmin(values)), vmax=100)
    for (row, column), value in np.ndenumerate(values):
        axes.text(column, row, f"{value:.2f}", ha="center", va="center", color="white" if value < 80 else "black")
    axes.set_xticks(range(len(keys)), keys)
    axes.set_yticks(range(len(keys)), keys)
    axes.set(xlabel="test manipulation", ylabel="training manipulation", title=title)
    figure.colorbar(image, ax=axes, label="AUC (%)")
    figure.tight_layout()
    return figure


def cross_manipulation(
    checkpoint_by_method: Mapping[str, str | os.PathLike],
    manifest_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    selection: Selection = Selection(),
    options: ScoringOptions = ScoringOptions(),
    label: str | None = None,
) -> pd.DataFrame:
    """Seed Table 4: frame AUC of each training method's checkpoint on each method's fakes (+ all reals).

    Returns the table (fractions): one row per training key, one column per test key, then "Cross Avg.", the mean
    of the row's off-diagonal cells.
    """
    if len(checkpoint_by_method) < 2:
        raise EvaluationError("the cross-manipulation protocol needs checkpoints for at least two methods")
    out = Path(out)
    frame = select_frames(manifest_path, dataclasses.replace(selection, methods=None))
    dataset = _single_dataset(frame, manifest_path, "cross-manipulation")
    fake_methods = sorted(frame.loc[frame["label"] == 1, "method"].unique())
    method_of = {key: resolve_method(key, fake_methods) for key in checkpoint_by_method}
    repeated = {m for m in method_of.values() if list(method_of.values()).count(m) > 1}
    if repeated:
        raise EvaluationError(f"several checkpoint keys name the same method: {', '.join(sorted(repeated))}")
    frame = manifest.select(frame, methods=list(method_of.values()))
    _require_both_classes(frame, manifest_path, selection.split)
    for path in checkpoint_by_method.values():
        if not Path(path).is_file():
            raise EvaluationError(f"{path}: checkpoint not found")
    keys = list(checkpoint_by_method)
    key_of = {method: key for key, method in method_of.items()}
    cells: dict[str, dict[str, dict]] = {}
    all_scores = []
    records = {}
    for number, (train_key, path) in enumerate(checkpoint_by_method.items(), start=1):
        model, trained = load_detector(path)
        preprocess = test_preprocess(trained, dataset, options.size)
        records[train_key] = {**checkpoint_record(path), "input_size": preprocess.input_size}
        scores = _scored(model, frame, preprocess, options, desc=f"{train_key} ({number}/{len(keys)})")
        result = evaluate_scores(scores, options.aggregate, options.n_boot, options.seed)
        cells[train_key] = {key_of[m]: result["per_method"][m] for m in method_of.values()}
        all_scores.append(scores.assign(train=train_key, checkpoint=str(path)))
    table = pd.DataFrame(
        [[cells[train][test]["frame"]["auc"] for test in keys] for train in keys], index=keys, columns=keys
    )
    values = table.to_numpy()
    table[CROSS_AVERAGE] = (values.sum(axis=1) - np.diag(values)) / (len(keys) - 1)
    table.index.name = "train"
    label = label or model.name
    report = {
        "label": label,
        "protocol": "cross-manipulation",
        "detector": model.name,
        "manifest": str(manifest_path),
        "dataset": dataset,
        "split": selection.split,
        "compressions": sorted(set(frame["compression"].astype(str)) - {""}),
        "frames": {"total": len(frame), "fake": int((frame["label"] == 1).sum())},
        "amp": options.amp,
        "aggregate": options.aggregate,
        "methods": method_of,
        "checkpoints": {key: str(path) for key, path in checkpoint_by_method.items()},
        "checkpoint_records": records,
        "auc": {train: table.loc[train].to_dict() for train in keys},
        "cells": cells,
    }
    header = ["Methods", "Train", *keys, CROSS_AVERAGE]
    rows = [[label, train, *[_pct(v) for v in table.loc[train]]] for train in keys]
    markdown = "\n".join(
        [
            f"# Cross-manipulation: {label}\n",
            f"Frame-level AUC (%) on `{dataset}` split `{selection.split}`: each cell is all test reals plus the "
            f"column method's fakes; diagonal = intra-testing; {CROSS_AVERAGE} = mean of the off-diagonal cells. "
            f"Methods: {', '.join(f'{k} = {m}' for k, m in method_of.items())}.\n",
            _markdown_table(header, rows),
        ]
    )
    _write_scores(pd.concat(all_scores, ignore_index=True), out / "cross_manipulation_scores")
    with atomic_path(out / "cross_manipulation.csv") as tmp:
        table.to_csv(tmp)
    _write_json(out / "cross_manipulation.json", report)
    _write_text(out / "cross_manipulation.md", markdown)
    _save_figure(_heatmap(table, f"Cross-manipulation AUC: {label}"), out / "cross_manipulation.png")
    return table


def _level_table(results: Mapping, kinds: Sequence[str], levels: Sequence[int], scope: str) -> pd.DataFrame:
    table = pd.DataFrame(
        [[results[kind][level][scope]["auc"] for kind in kinds] for level in levels],
        index=[f"Level {level}" for level in levels],
        columns=list(kinds),
        dtype=float,
    )
    table.loc[AVERAGE] = table.mean(axis=0)
    table[AVERAGE] = table[list(kinds)].mean(axis=1)
    return table


def _level_rows(table: pd.DataFrame) -> list[list[str]]:
    return [[str(row), *[_pct(v) for v in table.loc[row]]] for row in table.index]


def _line_plot(frame_table: pd.DataFrame, levels: Sequence[int], clean_auc: float, label: str) -> Figure:
    figure = Figure(figsize=(6, 4.5))
    axes = figure.add_subplot()
    for kind in frame_table.columns.drop(AVERAGE):
        axes.plot(levels, 100 * frame_table.loc[[f"Level {lv}" for lv in levels], kind], marker="o", label=kind)
    axes.axhline(100 * clean_auc, color="black", linestyle="--", linewidth=1, label=f"clean ({100 * clean_auc:.2f})")
    axes.set_xticks(list(levels))
    axes.set(xlabel="perturbation level", ylabel="AUC (%), frame level", title=f"Robustness: {label}")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure


def robustness(
    checkpoint: str | os.PathLike,
    manifest_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    perturbations: Sequence[str] = SEED_TABLE5,
    levels: Sequence[int] = LEVELS,
    selection: Selection = Selection(),
    options: ScoringOptions = ScoringOptions(),
    label: str | None = None,
) -> dict:
    """Seed Table 5: AUC under each perturbation type and level, next to the clean AUC."""
    out = Path(out)
    perturbers: dict[tuple[str, int], SeededPerturbation] = {}
    for kind in perturbations:
        for level in levels:
            perturber = SeededPerturbation(kind, level)  # canonical names: "GB" and "blur" are one type
            perturbers.setdefault((perturber.kind, perturber.level), perturber)
    kinds = list(dict.fromkeys(kind for kind, _ in perturbers))
    levels = list(dict.fromkeys(int(level) for level in levels))
    frame = select_frames(manifest_path, selection)
    dataset = _single_dataset(frame, manifest_path, "robustness")
    _require_both_classes(frame, manifest_path, selection.split)
    frame = frame.sort_values(["video", "frame"], kind="stable")  # a video's crops adjacent: encoded once
    model, trained = load_detector(checkpoint)
    preprocess = test_preprocess(trained, dataset, options.size)
    clean = _scored(model, frame, preprocess, options)
    runs = [clean.assign(perturbation="none", level=0)]
    results: dict[str, dict[int, dict]] = {kind: {} for kind in kinds}
    for number, perturber in enumerate(perturbers.values(), start=1):
        desc = f"{perturber.kind} level {perturber.level} ({number}/{len(perturbers)})"
        scores = _scored(model, frame, preprocess, options, perturbation=perturber, desc=desc)
        results[perturber.kind][perturber.level] = evaluate_scores(
            scores, options.aggregate, options.n_boot, options.seed
        )
        runs.append(scores.assign(perturbation=perturber.kind, level=perturber.level))
    clean_result = evaluate_scores(clean, options.aggregate, options.n_boot, options.seed)
    frame_table = _level_table(results, kinds, levels, "frame")
    video_table = _level_table(results, kinds, levels, "video")
    label = label or Path(checkpoint).stem
    report = {
        "label": label,
        "protocol": "robustness",
        **checkpoint_record(checkpoint),
        "manifest": str(manifest_path),
        "dataset": dataset,
        "split": selection.split,
        "compressions": sorted(set(frame["compression"].astype(str)) - {""}),
        "frames": {"total": len(frame), "fake": int((frame["label"] == 1).sum())},
        "input_size": preprocess.input_size,
        "amp": options.amp,
        "aggregate": options.aggregate,
        "perturbations": kinds,
        "levels": levels,
        "clean": clean_result,
        "results": results,
        "frame_auc": {row: frame_table.loc[row].to_dict() for row in frame_table.index},
        "video_auc": {row: video_table.loc[row].to_dict() for row in video_table.index},
    }

    header = ["Level", *kinds, AVERAGE]
    markdown = "\n".join(
        [
            f"# Robustness: {label}\n",
            f"AUC (%) on `{dataset}` split `{selection.split}` with each perturbation applied to the face crops "
            f"before the resize to {preprocess.input_size} px (seeded per image; compression encodes each "
            f"video's crops as one stream). Clean: frame AUC "
            f"{_pct(clean_result['frame']['auc'])}, video AUC {_pct(clean_result['video']['auc'])}.\n",
            "## Frame level (seed Table 5 layout: the Avg. row)\n",
            _markdown_table(header, _level_rows(frame_table)),
            f"## Video level ({options.aggregate} of frame scores)\n",
            _markdown_table(header, _level_rows(video_table)),
        ]
    )
    _write_scores(pd.concat(runs, ignore_index=True), out / "robustness_scores")
    _write_json(out / "robustness.json", report)
    _write_text(out / "robustness.md", markdown)
    _save_figure(_line_plot(frame_table, levels, clean_result["frame"]["auc"], label), out / "robustness.png")
    return report
