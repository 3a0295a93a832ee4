"""Metrics agree with scikit-learn and hand-derived values; aggregation, bootstrap and breakdowns behave."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk_metrics

from recce import metrics as M


@pytest.fixture(scope="module")
def scored() -> tuple[np.ndarray, np.ndarray]:
    """Overlapping real/fake scores rounded to 2 decimals, so ties occur."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.01, 0.99).round(2)
    return labels, scores


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, rng.normal(0.4 + 0.2 * labels, 0.2)


def test_metrics_equal_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = scored
    assert M.auc(labels, scores) == pytest.approx(sk_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert M.average_precision(labels, scores) == pytest.approx(
        sk_metrics.average_precision_score(labels, scores), abs=1e-12
    )
    assert M.accuracy(labels, scores) == pytest.approx(sk_metrics.accuracy_score(labels, scores >= 0.5))
    assert M.log_loss(labels, scores) == pytest.approx(sk_metrics.log_loss(labels, scores), rel=1e-9)


def test_eer_hand_computed_on_a_sloped_segment() -> None:
    # The 0.5 tie gives one ROC segment (0, 1/2) -> (1/2, 1), i.e. tpr = 1/2 + x; 1 - x = 1/2 + x at x = 1/4,
    # halfway along it, where the threshold is halfway from 0.8 (fpr 0) to 0.5 (fpr 1/2): 0.65.
    rate, threshold = M.eer([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.8])
    assert rate == pytest.approx(0.25, abs=1e-9)
    assert threshold == pytest.approx(0.65, abs=1e-9)


def test_eer_hand_computed_on_a_staircase() -> None:
    # Descending: 0.8 F, 0.7 R, 0.6 F, 0.5 R, 0.4 F, 0.3 R, 0.1 R (3 fakes, 4 reals). The ROC is flat at
    # tpr 2/3 for fpr in [1/4, 1/2], where 1 - x = 2/3 gives x = 1/3; the threshold runs linearly from 0.6
    # (fpr 1/4) to 0.5 (fpr 1/2), so at 1/3 it is 0.6 - 0.1/3 = 17/30.
    rate, threshold = M.eer([1, 0, 1, 0, 1, 0, 0], [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.1])
    assert rate == pytest.approx(1 / 3, abs=1e-9)
    assert threshold == pytest.approx(17 / 30, abs=1e-9)


def test_eer_separable_is_zero_and_inverted_is_one() -> None:
    rate, threshold = M.eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert rate == pytest.approx(0.0, abs=1e-9) and math.isfinite(threshold)
    assert 0.2 <= threshold <= 0.8
    assert M.eer([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])[0] == pytest.approx(1.0, abs=1e-9)


def test_eer_near_the_discrete_deepfakebench_value() -> None:
    labels, scores = synthetic(600, seed=5)  # continuous scores: ROC steps of about 1/300
    fpr, tpr, _ = sk_metrics.roc_curve(labels, scores)
    discrete = fpr[np.nanargmin(np.abs(1 - tpr - fpr))]
    rate, threshold = M.eer(labels, scores)
    assert rate == pytest.approx(discrete, abs=0.01)
    predicted_fake = scores >= threshold
    assert np.mean(~predicted_fake[labels == 1]) == pytest.approx(rate, abs=0.01)  # miss rate
    assert np.mean(predicted_fake[labels == 0]) == pytest.approx(rate, abs=0.01)  # false-alarm rate


def test_accuracy_counts_the_threshold_as_fake() -> None:
    labels = [0, 1, 0, 1]
    scores = [0.49, 0.5, 0.5, 0.51]
    assert M.accuracy(labels, scores) == 0.75  # 0.5 real is called fake
    assert M.accuracy(labels, scores, threshold=0.505) == 0.75  # now 0.5 fake is called real
    assert M.accuracy(labels, scores, threshold=0.0) == 0.5


def test_binary_metrics_counts_and_bad_input(scored: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = scored
    result = M.binary_metrics(labels, scores)
    assert result["n"] == 400 and result["n_real"] + result["n_fake"] == 400
    assert result["n_fake"] == int(labels.sum())
    assert (result["eer"], result["eer_threshold"]) == M.eer(labels, scores)
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        M.auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        M.binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match="probabilities"):
        M.log_loss([0, 1], [-2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        M.auc([0, 1], [0.1, float("nan")])


def test_one_class_gives_nan_not_an_exception() -> None:
    result = M.binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    for name in ("auc", "eer", "eer_threshold", "ap"):
        assert math.isnan(result[name]), name
    assert result["acc"] == pytest.approx(2 / 3) and result["n_real"] == 3 and result["n_fake"] == 0
    assert all(math.isnan(v) for v in M.bootstrap_auc_ci([1, 1], [0.2, 0.9]))
    assert math.isnan(M.binary_metrics([], [])["acc"])
    encoded = json.dumps(M.json_safe(result), allow_nan=False)
    assert json.loads(encoded)["auc"] is None and json.loads(encoded)["n"] == 3


def test_vectorised_weighted_auc_equals_sklearn_with_sample_weights(
    scored: tuple[np.ndarray, np.ndarray],
) -> None:
    labels, scores = scored
    weights = np.random.default_rng(1).integers(0, 4, size=(5, labels.size))
    got = M._weighted_aucs(weights, M._rank_pairs(labels, scores, np.arange(labels.size)))
    expected = [sk_metrics.roc_auc_score(labels, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def simple_bootstrap_ci(labels, scores, groups, n_boot: int, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    """The bootstrap written plainly: one resample at a time, each AUC from scikit-learn with multiplicity weights."""
    unit_of_sample, units = pd.factorize(groups)  # units numbered in order of first appearance
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, units.size, size=units.size), minlength=units.size)
        weights = counts[unit_of_sample]
        kept = labels[weights > 0]
        if 0 < kept.sum() < kept.size:
            aucs.append(sk_metrics.roc_auc_score(labels, scores, sample_weight=weights))
    low, high = np.percentile(aucs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


@pytest.mark.parametrize("cells_per_chunk", [M.BOOTSTRAP_CELLS_PER_CHUNK, 700, 1])
def test_bootstrap_sorted_once_equals_the_simple_path(cells_per_chunk: int, monkeypatch) -> None:
    rng = np.random.default_rng(8)
    video = np.repeat(rng.permutation(60), rng.integers(1, 6, 60))  # uneven videos, ids not in order
    video_label = (rng.random(60) < 0.6).astype(int)
    labels = video_label[video]
    scores = (rng.normal(0.4 + 0.2 * labels, 0.2)).round(2)  # ties
    monkeypatch.setattr(M, "BOOTSTRAP_CELLS_PER_CHUNK", cells_per_chunk)  # the chunking never changes the draws
    for groups in (video, np.arange(labels.size)):
        got = M.bootstrap_auc_ci(labels, scores, n_boot=150, seed=5, groups=groups)
        assert got == pytest.approx(simple_bootstrap_ci(labels, scores, groups, n_boot=150, seed=5), abs=1e-12)
    strings = np.array([f"video-{v}" for v in video])
    assert M.bootstrap_auc_ci(labels, scores, n_boot=150, seed=5, groups=strings) == M.bootstrap_auc_ci(
        labels, scores, n_boot=150, seed=5, groups=video
    )


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (200, 5000):
        labels, scores = synthetic(n, seed=n)
        low, high = M.bootstrap_auc_ci(labels, scores, n_boot=500, seed=0)
        assert low < M.auc(labels, scores) < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # width shrinks like 1 / sqrt(n): sqrt(25) = 5
    labels, scores = synthetic(200, seed=200)
    assert M.bootstrap_auc_ci(labels, scores, n_boot=500, seed=0) == M.bootstrap_auc_ci(
        labels, scores, n_boot=500, seed=0
    )
    narrow = M.bootstrap_auc_ci(labels, scores, n_boot=500, seed=0, alpha=0.5)
    wide = M.bootstrap_auc_ci(labels, scores, n_boot=500, seed=0, alpha=0.05)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_grouped_bootstrap_resamples_whole_videos() -> None:
    video_labels, video_scores = synthetic(150, seed=3)
    frames_per_video = 20
    frame_labels = np.repeat(video_labels, frames_per_video)
    frame_scores = np.repeat(video_scores, frames_per_video)
    video_ids = np.repeat([f"v{i:03d}" for i in range(150)], frames_per_video)
    # Copies of a video move together, so this is exactly the video-level bootstrap
    clustered = M.bootstrap_auc_ci(frame_labels, frame_scores, n_boot=300, seed=4, groups=video_ids)
    assert clustered == pytest.approx(M.bootstrap_auc_ci(video_labels, video_scores, n_boot=300, seed=4))
    naive = M.bootstrap_auc_ci(frame_labels, frame_scores, n_boot=300, seed=4)
    assert naive[1] - naive[0] < (clustered[1] - clustered[0]) / 2  # treating frames as independent
    singletons = M.bootstrap_auc_ci(video_labels, video_scores, n_boot=300, seed=4, groups=np.arange(150))
    assert singletons == M.bootstrap_auc_ci(video_labels, video_scores, n_boot=300, seed=4)


@pytest.fixture()
def frame_table() -> pd.DataFrame:
    rows = [
        # dataset, video, label, method, score
        ("ffpp", "000", 0, "youtube", 0.1),
        ("ffpp", "000", 0, "youtube", 0.7),
        ("ffpp", "000", 0, "youtube", 0.4),
        ("ffpp", "001", 0, "youtube", 0.2),
        ("ffpp", "001", 0, "youtube", 0.3),
        ("ffpp", "000_003", 1, "Deepfakes", 0.9),
        ("ffpp", "000_003", 1, "Deepfakes", 0.5),
        ("ffpp", "000_003", 1, "FaceSwap", 0.3),
        ("ffpp", "000_003", 1, "FaceSwap", 0.6),
        ("ffpp", "000_003", 1, "FaceSwap", 0.2),
        ("ffpp", "002_006", 1, "FaceSwap", 0.8),
    ]
    table = pd.DataFrame(rows, columns=["dataset", "video", "label", "method", "score"])
    table["frame"] = np.arange(len(table))
    return table


def test_aggregate_videos(frame_table: pd.DataFrame) -> None:
    def scores(how: str) -> dict[tuple[str, str], float]:
        videos = M.aggregate_videos(frame_table, how)
        return {(m, v): s for m, v, s in zip(videos["method"], videos["video"], videos["score"], strict=True)}

    assert scores("mean")[("youtube", "000")] == pytest.approx(0.4)
    assert scores("median")[("FaceSwap", "000_003")] == pytest.approx(0.3)
    assert scores("max")[("youtube", "001")] == pytest.approx(0.3)
    assert scores("vote")[("Deepfakes", "000_003")] == pytest.approx(1.0)  # 0.5 counts as fake
    assert scores("vote")[("FaceSwap", "000_003")] == pytest.approx(1 / 3)
    videos = M.aggregate_videos(frame_table)
    assert len(videos) == 5  # 000_003 of two methods stays two videos
    assert videos.set_index(["method", "video"]).loc[("youtube", "000"), "n_frames"] == 3
    assert list(videos.columns[:5]) == ["dataset", "video", "label", "method", "score"]
    with pytest.raises(ValueError, match="allowed: mean, median, max, vote"):
        M.aggregate_videos(frame_table, "min")
    mixed = frame_table.assign(label=[0] * 10 + [1], video="same", method="x")
    with pytest.raises(ValueError, match="mix real and fake frames, e.g. ffpp/x/same"):
        M.aggregate_videos(mixed)
    with pytest.raises(ValueError, match="lacks columns: score"):
        M.aggregate_videos(frame_table.drop(columns="score"))


def test_evaluate_scores_per_method_uses_all_reals(frame_table: pd.DataFrame) -> None:
    result = M.evaluate_scores(frame_table, how="mean", n_boot=200, seed=1)
    assert result["frame"]["n"] == 11 and result["video"]["n"] == 5
    assert result["frame"]["auc"] == pytest.approx(sk_metrics.roc_auc_score(frame_table["label"], frame_table["score"]))
    assert set(result["per_method"]) == {"Deepfakes", "FaceSwap"}
    face_swap = result["per_method"]["FaceSwap"]
    assert face_swap["frame"]["n_real"] == 5 and face_swap["frame"]["n_fake"] == 4
    assert face_swap["video"]["n_real"] == 2 and face_swap["video"]["n_fake"] == 2
    subset = frame_table[(frame_table["label"] == 0) | (frame_table["method"] == "FaceSwap")]
    assert face_swap["frame"]["auc"] == pytest.approx(sk_metrics.roc_auc_score(subset["label"], subset["score"]))
    # videos: reals 0.4, 0.25; FaceSwap 000_003 = 1.1/3, 002_006 = 0.8 -> 3 of 4 pairs ordered
    assert face_swap["video"]["auc"] == pytest.approx(0.75)
    low, high = result["frame"]["auc_ci"]
    assert low <= result["frame"]["auc"] <= high
    json.dumps(M.json_safe(result), allow_nan=False)


def test_per_method_breakdown_equals_evaluating_each_subset(frame_table: pd.DataFrame) -> None:
    shuffled = frame_table.sample(frac=1, random_state=2).reset_index(drop=True)
    for how in M.AGGREGATIONS:
        result = M.evaluate_scores(shuffled, how=how, n_boot=100, seed=3)
        reals = shuffled[shuffled["label"] == 0]
        for method in ("Deepfakes", "FaceSwap"):
            subset = pd.concat([reals, shuffled[shuffled["method"] == method]])
            alone = M.evaluate_scores(subset, how=how, n_boot=100, seed=3)
            assert json.dumps(M.json_safe(result["per_method"][method])) == json.dumps(
                M.json_safe({"frame": alone["frame"], "video": alone["video"]})
            )


def test_evaluate_scores_with_reals_only(frame_table: pd.DataFrame) -> None:
    result = M.evaluate_scores(frame_table[frame_table["label"] == 0], n_boot=50)
    assert math.isnan(result["frame"]["auc"]) and result["per_method"] == {}
    assert M.json_safe(result)["video"]["auc_ci"] == [None, None]
