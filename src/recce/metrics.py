"""Detection metrics as the official RECCE code defines them (spec/recce.md §3.1), video pooling, CIs.

Scores are fake probabilities (sigmoid of the logit); label 1 is fake. The official code is frame-level
only: AUC via `roc_auc_score`, ACC as `p >= 0.5`, EER where FPR = FNR on the linearly interpolated ROC.
Two differences from it, on purpose:

- `log_loss` is the mean over samples; the official LogLoss is the mean of per-batch BCE values, so its
  smaller last batch weighs as much as a full one.
- Ranking metrics (AUC, EER, AP) are NaN when only one class is present, instead of an exception, so one
  empty split never aborts an evaluation. NaN is not JSON: pass results through `json_safe`, which writes
  None for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn import metrics as sk_metrics

FAKE_THRESHOLD = 0.5
VIDEO_KEY: tuple[str, ...] = ("dataset", "method", "video")
FRAME_COLUMNS: tuple[str, ...] = ("dataset", "video", "label", "method", "score")
AGGREGATIONS: tuple[str, ...] = ("mean", "median", "max", "vote")
BOOTSTRAP_CELLS_PER_CHUNK = 2_000_000  # resamples x samples held at once: bounds memory near 16 MB per array

ArrayLike = Sequence[float] | np.ndarray | pd.Series


def _checked(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int8 0/1 and scores as finite float64, or a ValueError saying what is wrong."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} labels, {s.size} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {np.unique(y)[:5].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite, got {int((~np.isfinite(s)).sum())} NaN or infinite values")
    return y.astype(np.int8), s


def _has_both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC (`sklearn.roc_auc_score`); NaN with one class."""
    y, s = _checked(labels, scores)
    return float(sk_metrics.roc_auc_score(y, s)) if _has_both_classes(y) else math.nan


def eer(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """(EER, threshold) exactly as the official code: brentq on 1 - x - tpr(x), threshold interpolated at x.

    sklearn >= 1.3 starts the thresholds with inf; the official code ran with the older max(score) + 1,
    restored here so the threshold stays finite when the EER falls on the ROC's first segment.
    """
    y, s = _checked(labels, scores)
    if not _has_both_classes(y):
        return math.nan, math.nan
    fpr, tpr, thresholds = sk_metrics.roc_curve(y, s, pos_label=1)
    thresholds = thresholds.copy()
    thresholds[0] = thresholds[1] + 1
    rate = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    return float(rate), float(interp1d(fpr, thresholds)(rate))


def accuracy(labels: ArrayLike, scores: ArrayLike, threshold: float = FAKE_THRESHOLD) -> float:
    """Fraction right when score >= threshold means fake (the official ACC); NaN for no samples."""
    y, s = _checked(labels, scores)
    return float(np.mean((s >= threshold) == (y == 1))) if y.size else math.nan


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision with fake as the positive class; NaN with one class."""
    y, s = _checked(labels, scores)
    return float(sk_metrics.average_precision_score(y, s)) if _has_both_classes(y) else math.nan


def log_loss(labels: ArrayLike, scores: ArrayLike, eps: float = 1e-7) -> float:
    """Per-sample mean binary cross-entropy of probabilities clipped to [eps, 1 - eps]; NaN for no samples."""
    y, s = _checked(labels, scores)
    if not y.size:
        return math.nan
    if s.min() < 0 or s.max() > 1:
        raise ValueError(f"log loss needs probabilities in [0, 1], got scores in [{s.min():g}, {s.max():g}]")
    p = np.clip(s, eps, 1 - eps)
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


def binary_metrics(labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """All metrics of one evaluation; undefined ones are NaN (see `json_safe`)."""
    y, s = _checked(labels, scores)
    equal_error_rate, eer_threshold = eer(y, s)
    return {
        "auc": auc(y, s),
        "eer": equal_error_rate,
        "eer_threshold": eer_threshold,
        "acc": accuracy(y, s),
        "ap": average_precision(y, s),
        "log_loss": log_loss(y, s),
        "n": int(y.size),
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
    }


class _RankedPairs(NamedTuple):
    """Where each positive's score falls among the negatives, sorted once: all that a resample's AUC reads."""

    negative_units: np.ndarray  # the unit of each negative, negatives in score order (stable)
    positive_units: np.ndarray  # the unit of each positive
    below: np.ndarray  # per positive: negatives scoring strictly lower
    through: np.ndarray  # per positive: negatives scoring lower or equal


def _rank_pairs(y: np.ndarray, s: np.ndarray, unit_of_sample: np.ndarray) -> _RankedPairs:
    negatives = np.flatnonzero(y == 0)
    negatives = negatives[np.argsort(s[negatives], kind="stable")]
    positives = np.flatnonzero(y == 1)
    sorted_scores = s[negatives]
    below = np.searchsorted(sorted_scores, s[positives], side="left")
    through = np.searchsorted(sorted_scores, s[positives], side="right")
    return _RankedPairs(unit_of_sample[negatives], unit_of_sample[positives], below, through)


def _weighted_aucs(unit_weights: np.ndarray, pairs: _RankedPairs) -> np.ndarray:
    """AUC for each row of integer unit weights (a sample weighs its unit's weight), ties counting one half.

    Each positive adds its weight times the negative weight below its score plus half the tied one, read
    from one cumulative sum over the negatives in score order. The weights are whole numbers and every sum
    stays below 2**53 (up to about 10**8 samples), so the float64 sums are exact in any order.
    """
    negative_weights = np.take(unit_weights, pairs.negative_units, axis=1)
    cumulative = np.zeros((unit_weights.shape[0], pairs.negative_units.size + 1))
    np.cumsum(negative_weights, axis=1, out=cumulative[:, 1:])
    positive_weights = np.take(unit_weights, pairs.positive_units, axis=1).astype(np.float64)
    lower_and_tied = np.take(cumulative, pairs.below, axis=1)
    lower_and_tied += np.take(cumulative, pairs.through, axis=1)
    twice_wins = np.einsum("ij,ij->i", positive_weights, lower_and_tied)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (twice_wins / 2) / (positive_weights.sum(axis=1) * cumulative[:, -1])


def bootstrap_auc_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC; with `groups` (e.g. video ids) whole groups are resampled.

    Frames of one video are correlated, so a frame-level CI should resample videos (cluster bootstrap).
    Resamples are held as multiplicity weights over the samples sorted once, so each resample costs a few
    linear array passes: time grows linearly with the number of samples, about 57 s per million frames for
    1000 resamples on a busy 2-core CPU (benchmarks/README.md). Resamples that lose a class are dropped;
    (NaN, NaN) when the data has one class.
    """
    y, s = _checked(labels, scores)
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"bootstrap needs n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}")
    if not _has_both_classes(y):
        return math.nan, math.nan
    if groups is None:
        unit_of_sample = np.arange(y.size)
    else:
        group_ids = np.asarray(groups).ravel()
        if group_ids.dtype.kind not in "biu":  # integer ids factorize directly, others as Python objects
            group_ids = group_ids.astype(object)
        unit_of_sample = pd.factorize(group_ids, use_na_sentinel=False)[0]
        if unit_of_sample.size != y.size:
            raise ValueError(f"groups has {unit_of_sample.size} entries for {y.size} labels")
    n_units = int(unit_of_sample.max()) + 1
    pairs = _rank_pairs(y, s, unit_of_sample)
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CELLS_PER_CHUNK // max(y.size, n_units))
    aucs = []
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        draws = rng.integers(0, n_units, size=(rows, n_units)) + n_units * np.arange(rows)[:, None]
        unit_counts = np.bincount(draws.ravel(), minlength=rows * n_units).reshape(rows, n_units)
        aucs.append(_weighted_aucs(unit_counts.astype(np.int32), pairs))
    values = np.concatenate(aucs)
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _check_frame_table(frame_table: pd.DataFrame) -> None:
    missing = [c for c in FRAME_COLUMNS if c not in frame_table.columns]
    if missing:
        raise ValueError(f"score table lacks columns: {', '.join(missing)}")


def _grouped_videos(frame_table: pd.DataFrame, how: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The video table (sorted by key) and, for each frame, its row in that table: one group-by for both."""
    _check_frame_table(frame_table)
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown video aggregation {how!r}; allowed: {', '.join(AGGREGATIONS)}")
    key = list(VIDEO_KEY)
    table = frame_table[[*key, "label", "score"]].copy()
    if how == "vote":
        table["score"] = (table["score"] >= FAKE_THRESHOLD).astype(np.float64)
    grouped = table.groupby(key, sort=True, observed=True, dropna=False)
    videos = grouped.agg(
        label=("label", "first"),
        label_min=("label", "min"),
        label_max=("label", "max"),
        score=("score", "mean" if how == "vote" else how),
        n_frames=("score", "size"),
    ).reset_index()
    mixed = videos[videos["label_min"] != videos["label_max"]]
    if len(mixed):
        first = mixed.iloc[0]
        raise ValueError(
            f"{len(mixed)} videos mix real and fake frames, e.g. {first['dataset']}/{first['method']}/{first['video']}"
        )
    return videos[["dataset", "video", "label", "method", "score", "n_frames"]], grouped.ngroup().to_numpy()


def aggregate_videos(frame_table: pd.DataFrame, how: str = "mean") -> pd.DataFrame:
    """One row per video: its frames' scores pooled by mean, median, max or vote (fraction >= 0.5).

    Videos are keyed by (dataset, method, video): FF++ fakes of different methods share ids such as
    000_003, and merging them (as DeepfakeBench does) would change the video count. With ids unique within
    a dataset this is one row per (dataset, video). A table should hold one compression/perturbation setting.
    """
    return _grouped_videos(frame_table, how)[0]


def _summary(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int) -> dict:
    result: dict = binary_metrics(labels, scores)
    result["auc_ci"] = list(bootstrap_auc_ci(labels, scores, n_boot=n_boot, seed=seed, groups=groups))
    return result


def evaluate_scores(frame_table: pd.DataFrame, how: str = "mean", n_boot: int = 1000, seed: int = 0) -> dict:
    """Frame and video metrics, overall and per fake method (all reals plus that method's fakes).

    Videos are aggregated once; each method's rows are index arrays into the frame and video tables, so a
    method costs its metrics and bootstrap, not another copy and group-by of the table. The frame-level CI
    resamples whole videos.
    """
    videos, video_of_frame = _grouped_videos(frame_table, how)
    labels = frame_table["label"].to_numpy()
    scores = frame_table["score"].to_numpy(dtype=np.float64)
    video_labels = videos["label"].to_numpy()
    video_scores = videos["score"].to_numpy(dtype=np.float64)

    def frame_and_video(rows: np.ndarray, video_rows: np.ndarray) -> dict[str, dict]:
        return {
            "frame": _summary(labels[rows], scores[rows], video_of_frame[rows], n_boot, seed),
            "video": _summary(video_labels[video_rows], video_scores[video_rows], None, n_boot, seed),
        }

    result = frame_and_video(np.arange(labels.size), np.arange(len(videos)))
    is_fake, is_fake_video = labels == 1, video_labels == 1
    real_rows, real_videos = np.flatnonzero(~is_fake), ~is_fake_video
    video_methods = videos["method"].to_numpy()
    fake_methods = frame_table["method"][is_fake].set_axis(np.flatnonzero(is_fake))
    result["per_method"] = {
        str(method): frame_and_video(
            np.concatenate([real_rows, fakes.index.to_numpy()]),
            np.flatnonzero(real_videos | (is_fake_video & (video_methods == method))),
        )
        for method, fakes in fake_methods.groupby(fake_methods, sort=True, observed=True)
    }
    return result


def json_safe(value: object) -> object:
    """Nested metrics with NaN/inf as None and numpy scalars as Python numbers, for strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
