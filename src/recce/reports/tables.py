"""The seed's Tables 1-5 assembled from `recce evaluate` outputs, with the paper's numbers and the difference beside.

Which table a result belongs to comes from its metadata, never from folder names: the detector and the training
data the checkpoint's provenance recorded (`trained_on`, `methods`, `train_config`), and the protocol and test sets
of the evaluation. A cell no result fills is shown as missing with the reason (no run given, trained on other
data, test set not evaluated), never as a number. The published values live in `paper_tables.yaml` beside this
module, with their source.

- Table 1: RECCE variants (reconstruction of real & fake, no metric loss, ...) trained on WildDeepfake, tested
  on FF++: AUC, EER.
- Table 2: RECCE aggregation variants trained and tested on WildDeepfake: Acc, AUC.
- Table 3: detectors trained on WildDeepfake, tested on FF++, Celeb-DF and DFDC: AUC, EER.
- Table 4: detectors trained on one FF++ method, tested on each (frame AUC), plus the off-diagonal mean.
- Table 5: detectors trained on FF++ c23, AUC on FF++ c23 under five perturbations (mean over the levels run).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

TABLES = (1, 2, 3, 4, 5)
REPORT_FILES = {
    "metrics.json": "dataset",
    "cross_manipulation.json": "cross-manipulation",
    "robustness.json": "robustness",
}
FFPP_KEYS = {"Deepfakes": "DF", "Face2Face": "F2F", "FaceSwap": "FS", "NeuralTextures": "NT"}
TABLE5_KINDS = {
    "compression": "Compress",
    "blur": "Blur",
    "contrast": "Contrast",
    "saturation": "Saturate",
    "pixelation": "Pixelate",
}
DATASET_NAMES = {"ffpp": "FF++", "celebdf": "Celeb-DF", "dfdc": "DFDC", "wilddeepfake": "WildDeepfake"}
NO_RUN = "no run given"
CROSS_AVERAGE = "Cross Avg."
AVERAGE = "Avg."


class TablesError(ValueError):
    """A table that cannot be built as asked; the message names the path or option."""


@cache
def paper() -> dict[str, Any]:
    """The published numbers (package data) with their source."""
    text = resources.files("recce.reports").joinpath("paper_tables.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@dataclass(frozen=True)
class Report:
    """One evaluation output: its file, protocol and content."""

    path: Path
    protocol: str
    data: dict[str, Any]


def find_reports(paths: Iterable[str | os.PathLike]) -> tuple[list[Report], list[str]]:
    """Every evaluation output under the given run or evaluation folders (or files), and one line per problem."""
    reports, problems = [], []
    for given in paths:
        path = Path(given)
        if path.is_file():
            files = [path] if path.name in REPORT_FILES else []
        elif path.is_dir():
            files = sorted(p for name in REPORT_FILES for p in path.rglob(name))
        else:
            problems.append(f"{path}: no such file or folder")
            continue
        if not files:
            problems.append(f"{path}: no evaluation output ({', '.join(REPORT_FILES)}) found")
        for file in files:
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                problems.append(f"{file}: not a readable evaluation output ({str(error).splitlines()[0]})")
                continue
            if not isinstance(data, dict):
                problems.append(f"{file}: not a readable evaluation output (expected a JSON object)")
                continue
            reports.append(Report(file, data.get("protocol", REPORT_FILES[file.name]), data))
    return reports, problems


@dataclass
class Cell:
    """Our value (%), or why it is missing; the paper's value where the seed has one."""

    value: float | None = None
    missing: str | None = None
    paper: float | None = None
    source: str | None = None  # the evaluation output the value came from

    @property
    def diff(self) -> float | None:
        return None if self.value is None or self.paper is None else round(self.value - self.paper, 2)


@dataclass
class Row:
    label: str  # the seed's row name (detector or ablation variant)
    key: str  # detector name, or the variant's row label for Tables 1-2
    train: str | None = None  # Table 4: the training method (DF, F2F, FS, NT)
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def has_paper(self) -> bool:
        return any(cell.paper is not None for cell in self.cells.values())


@dataclass
class Table:
    number: int
    title: str
    columns: list[str]
    rows: list[Row]
    notes: list[str]
    runs: list[dict[str, str]]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.number,
            "title": self.title,
            "paper_source": self.source,
            "columns": self.columns,
            "rows": [
                {
                    "label": row.label,
                    "key": row.key,
                    **({"train": row.train} if row.train else {}),
                    "cells": {
                        column: {
                            "value": cell.value,
                            "missing": cell.missing,
                            "paper": cell.paper,
                            "diff": cell.diff,
                            "source": cell.source,
                        }
                        for column, cell in row.cells.items()
                    },
                }
                for row in self.rows
            ],
            "notes": self.notes,
            "runs": self.runs,
        }


# ----------------------------------------------------------------------------------------------- reading reports


def _pct(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else round(100 * float(value), 2)


def _training(data: dict[str, Any]) -> tuple[list[str] | None, list[str]]:
    """The datasets and fake methods a checkpoint was trained on (None: no provenance, e.g. converted weights)."""
    trained_on = data.get("trained_on")
    methods = [m for m in data.get("trained_methods") or [] if m in FFPP_KEYS]
    return (sorted(trained_on) if trained_on else None), methods


def _trained_on_text(trained_on: list[str] | None) -> str:
    if trained_on is None:
        return "training data unknown (no provenance in the checkpoint, e.g. converted weights)"
    return f"trained on {', '.join(trained_on)}"


def _test_set(data: dict[str, Any], dataset: str, prefer: str = "c23") -> tuple[str | None, dict | None]:
    """The report's test set of `dataset` (FF++: the c23 one when several), or why there is none."""
    sets = {name: result for name, result in data.get("datasets", {}).items() if name.split("/")[0] == dataset}
    for name in (dataset, f"{dataset}/{prefer}", *sorted(sets)):
        if name in sets:
            return name, sets[name]
    excluded = data.get("excluded", {}).get(dataset)
    return None, ({"why": f"{dataset} left out of the evaluation: {excluded}"} if excluded else None)


def _not_evaluated(data: dict[str, Any], dataset: str) -> str:
    _, why = _test_set(data, dataset)
    return why["why"] if why else f"not evaluated on {dataset}"


def _variant_t1(config: dict[str, Any]) -> str | None:
    loss, model = config.get("loss", {}), config.get("model", {})
    if model.get("aggregation", "graph") != "graph" or not model.get("multi_scale", True):
        return None
    metric = float(loss.get("lambda_metric", 0.1)) > 0
    rows = list(paper()["tables"][1]["rows"])
    if loss.get("reconstruct") == "all" and not metric:
        return rows[0]
    if loss.get("reconstruct", "real") == "real":
        return rows[2] if metric else rows[1]
    return None


def _variant_t2(config: dict[str, Any]) -> str | None:
    loss, model = config.get("loss", {}), config.get("model", {})
    if loss.get("reconstruct", "real") != "real" or float(loss.get("lambda_metric", 0.1)) <= 0:
        return None
    rows = list(paper()["tables"][2]["rows"])
    by_operator = {"sum": rows[0], "concat": rows[1], "nonlocal": rows[2]}
    aggregation = model.get("aggregation", "graph")
    if aggregation in by_operator and model.get("multi_scale", True):
        return by_operator[aggregation]
    if aggregation == "graph":
        return rows[4] if model.get("multi_scale", True) else rows[3]
    return None


# ------------------------------------------------------------------------------------------ per-table readings


@dataclass
class Reading:
    """What one report says for one table: a row and its values, the columns it cannot fill and why, or a refusal."""

    row: str | None = None
    train: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    refused: str | None = None  # why the report is not a result of this table
    note: str | None = None


def _read_ablation(report: Report, number: int) -> list[Reading]:
    data = report.data
    if report.protocol != "dataset":
        return []
    config = data.get("train_config") or {}
    variant = (_variant_t1 if number == 1 else _variant_t2)(config) if data.get("detector") == "recce" else None
    trained_on, _ = _training(data)
    if variant is None:
        return [Reading(refused=f"{report.path}: not one of the RECCE variants of Table {number}")]
    if trained_on != ["wilddeepfake"]:
        return [Reading(row=variant, refused=f"{_trained_on_text(trained_on)}, not WildDeepfake")]
    test = "ffpp" if number == 1 else "wilddeepfake"
    name, result = _test_set(data, test)
    columns = ("AUC", "EER") if number == 1 else ("Acc", "AUC")
    if name is None:
        return [Reading(row=variant, missing=dict.fromkeys(columns, _not_evaluated(data, test)))]
    metrics = {"AUC": "auc", "EER": "eer", "Acc": "acc"}
    values = {column: _pct(result["frame"][metrics[column]]) for column in columns}
    return [Reading(row=variant, values=values, note=f"{variant}: tested on {name}")]


def _read_t3(report: Report) -> list[Reading]:
    data = report.data
    if report.protocol != "dataset":
        return []
    detector = data.get("detector")
    trained_on, _ = _training(data)
    if trained_on != ["wilddeepfake"]:
        return [Reading(row=detector, refused=f"{_trained_on_text(trained_on)}, not WildDeepfake")]
    reading = Reading(row=detector)
    for dataset, title in (("ffpp", "FF++"), ("celebdf", "Celeb-DF"), ("dfdc", "DFDC")):
        name, result = _test_set(data, dataset)
        for metric in ("AUC", "EER"):
            column = f"{title} {metric}"
            if name is None:
                reading.missing[column] = _not_evaluated(data, dataset)
            else:
                reading.values[column] = _pct(result["frame"][metric.lower()])
    return [reading]


def _cross_average(values: dict[str, float | None], train: str) -> float | None:
    others = [values.get(key) for key in FFPP_KEYS.values() if key != train]
    if any(v is None for v in others):
        return None
    return round(sum(others) / len(others), 2)


def _read_t4(report: Report) -> list[Reading]:
    data = report.data
    if report.protocol == "cross-manipulation":
        if data.get("dataset") != "ffpp":
            return [Reading(refused=f"{report.path}: cross-manipulation on {data.get('dataset')}, not FF++")]
        readings = []
        records = data.get("checkpoint_records", {})
        for train_key, cells in data.get("cells", {}).items():
            method = data.get("methods", {}).get(train_key)
            record = records.get(train_key, {})
            detector = record.get("detector", data.get("detector"))
            trained_on, _ = _training(record) if record else (["ffpp"], [])
            if method not in FFPP_KEYS:
                readings.append(Reading(row=detector, refused=f"training key {train_key} is not an FF++ method"))
                continue
            train = FFPP_KEYS[method]
            if trained_on != ["ffpp"]:
                readings.append(Reading(row=detector, train=train, refused=f"{_trained_on_text(trained_on)}"))
                continue
            by_method = {data["methods"][key]: cell for key, cell in cells.items()}
            values = {FFPP_KEYS[m]: _pct(c["frame"]["auc"]) for m, c in by_method.items() if m in FFPP_KEYS}
            readings.append(_t4_reading(detector, train, values))
        return readings
    if report.protocol != "dataset":
        return []
    detector = data.get("detector")
    trained_on, methods = _training(data)
    if trained_on != ["ffpp"]:
        return [Reading(row=detector, refused=f"{_trained_on_text(trained_on)}, not FF++ (one method)")]
    if len(methods) != 1:
        listed = ", ".join(methods) or "none"
        return [Reading(row=detector, refused=f"trained on FF++ methods {listed}; a Table 4 row is one method")]
    train = FFPP_KEYS[methods[0]]
    name, result = _test_set(data, "ffpp")
    if name is None:
        return [Reading(row=detector, train=train, missing=dict.fromkeys(FFPP_KEYS.values(), "not tested on FF++"))]
    per_method = result.get("per_method", {})
    values = {FFPP_KEYS[m]: _pct(r["frame"]["auc"]) for m, r in per_method.items() if m in FFPP_KEYS}
    return [_t4_reading(detector, train, values, note=f"{_row_label(4, detector)} {train}: tested on {name}")]


def _t4_reading(detector: str, train: str, values: dict[str, float | None], note: str | None = None) -> Reading:
    reading = Reading(row=detector, train=train, values=dict(values), note=note)
    for key in FFPP_KEYS.values():
        if key not in values:
            reading.missing[key] = f"no {key} fakes in the test set"
    average = _cross_average(values, train)
    if average is None:
        reading.missing[CROSS_AVERAGE] = "needs all four test methods"
    else:
        reading.values[CROSS_AVERAGE] = average
    return reading


def _read_t5(report: Report) -> list[Reading]:
    data = report.data
    if report.protocol != "robustness":
        return []
    detector = data.get("detector")
    trained_on, methods = _training(data)
    if trained_on != ["ffpp"]:
        return [Reading(row=detector, refused=f"{_trained_on_text(trained_on)}, not FF++ c23")]
    if len(methods) != len(FFPP_KEYS):
        listed = ", ".join(methods) or "none"
        return [Reading(row=detector, refused=f"trained on FF++ methods {listed}; Table 5 trains on all four")]
    train_compressions = ((data.get("train_config") or {}).get("data") or {}).get("compressions")
    if train_compressions not in (None, ["c23"]):
        return [Reading(row=detector, refused=f"trained on FF++ {' '.join(train_compressions)}, not c23")]
    if data.get("dataset") != "ffpp" or data.get("compressions") not in ([], ["c23"]):
        tested = f"{data.get('dataset')} {' '.join(data.get('compressions') or [])}".strip()
        return [Reading(row=detector, refused=f"robustness tested on {tested}, not FF++ c23")]
    average_row = data.get("frame_auc", {}).get(AVERAGE, {})
    reading = Reading(row=detector)
    for kind, column in TABLE5_KINDS.items():
        if kind in average_row:
            reading.values[column] = _pct(average_row[kind])
        else:
            reading.missing[column] = f"{kind} not evaluated"
    present = [reading.values[c] for c in TABLE5_KINDS.values() if reading.values.get(c) is not None]
    if len(present) == len(TABLE5_KINDS):
        reading.values[AVERAGE] = round(sum(present) / len(present), 2)
    else:
        reading.missing[AVERAGE] = "needs all five perturbations"
    levels = data.get("levels", [])
    if list(levels) != [1, 2, 3, 4, 5]:
        label = _row_label(5, detector)
        reading.note = f"{label}: AUC averaged over levels {' '.join(map(str, levels))} only"
    return [reading]


READERS = {
    1: lambda report: _read_ablation(report, 1),
    2: lambda report: _read_ablation(report, 2),
    3: _read_t3,
    4: _read_t4,
    5: _read_t5,
}


# ------------------------------------------------------------------------------------------------- assembling


def _row_label(number: int, key: str) -> str:
    return key if number in (1, 2) else paper()["names"].get(key, key)


def _paper_values(number: int) -> dict[tuple[str, str | None], dict[str, float]]:
    spec = paper()["tables"][number]
    columns = spec["columns"]
    values: dict[tuple[str, str | None], dict[str, float]] = {}
    for key, row in spec["rows"].items():
        if number == 4:
            for train, numbers in row.items():
                values[(key, train)] = dict(zip(columns, numbers, strict=True))
        else:
            values[(key, None)] = dict(row) if isinstance(row, dict) else dict(zip(columns, row, strict=True))
    return values


def build_table(number: int, reports: Sequence[Report]) -> Table:
    """Seed table `number` from the reports: the paper's rows first (in its order), then rows it does not have."""
    if number not in TABLES:
        raise TablesError(f"unknown table {number}; the seed has tables {', '.join(map(str, TABLES))}")
    spec = paper()["tables"][number]
    columns = list(spec["columns"])
    published = _paper_values(number)
    filled: dict[tuple[str, str | None], dict[str, Cell]] = {}
    refused: dict[tuple[str, str | None], list[str]] = {}
    refused_by_detector: dict[str, list[str]] = {}
    notes: list[str] = []
    runs: list[dict[str, str]] = []
    for report in reports:
        for reading in READERS[number](report):
            if reading.refused:
                if reading.row is None:
                    continue
                if reading.train is None and number == 4:
                    refused_by_detector.setdefault(reading.row, []).append(reading.refused)
                else:
                    refused.setdefault((reading.row, reading.train), []).append(reading.refused)
                continue
            key = (reading.row, reading.train)
            cells = filled.setdefault(key, {})
            used = False
            for column, value in reading.values.items():
                if column in cells and cells[column].value is not None:
                    notes.append(
                        f"{_row_label(number, reading.row)} {reading.train or ''} {column}: several results; "
                        f"kept {cells[column].source}, ignored {report.path}".replace("  ", " ")
                    )
                    continue
                cells[column] = Cell(value=value, source=str(report.path))
                used = True
            for column, why in reading.missing.items():
                cells.setdefault(column, Cell(missing=why))
            if used:
                runs.append(_run_entry(report))
                if reading.note:
                    notes.append(reading.note)
    keys = list(published) + sorted(k for k in filled if k not in published)
    rows = []
    for key in keys:
        detector, train = key
        row = Row(label=_row_label(number, detector), key=detector, train=train)
        why_not = refused.get(key) or refused_by_detector.get(detector)
        for column in columns:
            cell = filled.get(key, {}).get(column) or Cell(
                missing="; ".join(dict.fromkeys(why_not)) if why_not else NO_RUN
            )
            cell.paper = published.get(key, {}).get(column)
            row.cells[column] = cell
        rows.append(row)
    return Table(number, spec["title"], columns, rows, notes, _unique(runs), paper()["source"])


def _run_entry(report: Report) -> dict[str, str]:
    data = report.data
    if "checkpoint_records" in data:
        hashes = ", ".join(f"{k} {r.get('checkpoint_sha256', '')[:12]}" for k, r in data["checkpoint_records"].items())
    else:
        hashes = str(data.get("checkpoint_sha256", ""))[:12]
    return {
        "report": str(report.path),
        "protocol": report.protocol,
        "detector": str(data.get("detector")),
        "checkpoint_sha256": hashes,
    }


def _unique(runs: list[dict[str, str]]) -> list[dict[str, str]]:
    return list({run["report"]: run for run in runs}.values())


# --------------------------------------------------------------------------------------------------- writing


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _lead(table: Table, row: Row) -> list[str]:
    return [row.label, row.train or ""] if table.number == 4 else [row.label]


def to_markdown(table: Table) -> str:
    head = ["Methods", "Train"] if table.number == 4 else ["Methods"]
    header = [*head, *table.columns]
    lines = [
        f"# Table {table.number}: {table.title}\n",
        f"Values in %, frame level. Each row with a counterpart in the seed is followed by the paper's number "
        f"(*paper*) and our value minus it (*Δ*). Missing cells say why. Paper: {table.source}.\n",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
    ]
    for row in table.rows:
        cells = [_fmt(c.value) if c.value is not None else f"– ({c.missing})" for c in row.cells.values()]
        lines.append("| " + " | ".join([*_lead(table, row), *cells]) + " |")
        if row.has_paper:
            pad = [""] * (len(head) - 1)
            lines.append("| " + " | ".join(["*paper*", *pad, *[_fmt(c.paper) for c in row.cells.values()]]) + " |")
            if any(c.diff is not None for c in row.cells.values()):
                lines.append("| " + " | ".join(["*Δ*", *pad, *[_signed(c.diff) for c in row.cells.values()]]) + " |")
    if table.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in table.notes]]
    if table.runs:
        lines += ["", "Evaluation outputs used:"]
        lines += [
            f"- `{run['report']}` ({run['detector']}, checkpoint {run['checkpoint_sha256']})" for run in table.runs
        ]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = ["Methods", "Train"] if table.number == 4 else ["Methods"]
    writer.writerow([*head, "row", *table.columns, "missing"])
    for row in table.rows:
        reasons = {column: cell.missing for column, cell in row.cells.items() if cell.value is None}
        if len(reasons) == len(row.cells) and len(set(reasons.values())) == 1:
            missing = f"all: {next(iter(reasons.values()))}"
        else:
            missing = "; ".join(f"{column}: {why}" for column, why in reasons.items())
        writer.writerow([*_lead(table, row), "ours", *[_fmt(c.value) for c in row.cells.values()], missing])
        if row.has_paper:
            writer.writerow([*_lead(table, row), "paper", *[_fmt(c.paper) for c in row.cells.values()], ""])
            writer.writerow([*_lead(table, row), "diff", *[_signed(c.diff) for c in row.cells.values()], ""])
    return buffer.getvalue()


def write_table(table: Table, out: str | os.PathLike) -> list[Path]:
    """table<N>.md, .csv and .json under `out`, each written to a temporary name and renamed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    contents = {
        "md": to_markdown(table),
        "csv": to_csv(table),
        "json": json.dumps(table.to_dict(), indent=2, ensure_ascii=False) + "\n",
    }
    for suffix, text in contents.items():
        path = out / f"table{table.number}.{suffix}"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        written.append(path)
    return written
