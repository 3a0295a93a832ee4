"""`recce tables`: the seed's Tables 1-5 from evaluation outputs, with the paper's numbers and the difference."""

from __future__ import annotations

import argparse
import sys

from recce.reports.tables import TABLES, build_table, find_reports, write_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, choices=[*map(str, TABLES), "all"], help="seed table number, or all")
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="run folders or `recce evaluate` output folders (searched for metrics.json, cross_manipulation.json, "
        "robustness.json); none: the table with the paper's numbers and every cell of ours missing",
    )
    parser.add_argument("--out", default="tables", help="output folder (default tables/)")


def run(args: argparse.Namespace) -> int:
    reports, problems = find_reports(args.runs)
    for problem in problems:
        print(f"recce tables: {problem}", file=sys.stderr)
    numbers = TABLES if args.table == "all" else (int(args.table),)
    for number in numbers:
        table = build_table(number, reports)
        paths = write_table(table, args.out)
        filled = sum(cell.value is not None for row in table.rows for cell in row.cells.values())
        total = sum(len(row.cells) for row in table.rows)
        print(f"table {number}: {filled} of {total} cells filled from {len(table.runs)} output(s); wrote {paths[0]}")
    if problems:
        print(f"recce tables: {len(problems)} path(s) gave no evaluation output", file=sys.stderr)
    return 0
