"""The data-quality table of a dataset (``tracklstm evaluate quality``): one HTML page from the
``quality/<part>.json`` summaries that ``tracklstm.data.to_parquet`` writes per part."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tracklstm import stage_cli
from tracklstm.constants import FEATURES, UNITS
from tracklstm.evaluate.methods import EvaluationInputError
from tracklstm.evaluate.report import html_page, html_table
from tracklstm.files import atomic_path, check_outputs

log = logging.getLogger(__name__)

#: One part's summary: (part name, its JSON, its skipped rows by reason).
Part = tuple[str, dict[str, Any], dict[str, int]]


def read_quality(quality_jsons: Sequence[str | Path]) -> list[Part]:
    """The summaries; EvaluationInputError names a file that is not one."""
    parts = []
    for path in quality_jsons:
        try:
            q = json.loads(Path(path).read_text())
            for key in ("rows", "complete_rows", "rows_with_nulls"):
                int(q[key])
        except json.JSONDecodeError as err:
            raise EvaluationInputError(f"{path}: not valid JSON ({err})") from None
        except KeyError as err:
            raise EvaluationInputError(f"{path}: no key {err} (not a quality summary?)") from None
        skipped = q.get("skipped_rows") or {}
        if not isinstance(skipped, dict):
            skipped = {"skipped": int(skipped)}
        parts.append((Path(path).stem, q, skipped))
    if not parts:
        raise EvaluationInputError("no quality files given")
    return parts


def _rows_table(parts: Sequence[Part]) -> tuple[list[str], list[list[Any]], list[int]]:
    """Header, one row per part (and a total row for several parts), and the totals."""
    reasons = sorted({r for _, _, sk in parts for r in sk})
    header = ["part", "rows", "complete rows", "rows with empty cells", "skipped rows"]
    header += [f"skipped: {r.replace('_', ' ')}" for r in reasons]
    rows = []
    for name, q, sk in parts:
        rows.append(
            [name, q["rows"], q["complete_rows"], q["rows_with_nulls"], sum(sk.values())]
            + [sk.get(r, 0) for r in reasons]
        )
    totals = [sum(r[i] for r in rows) for i in range(1, len(header))]
    if len(rows) > 1:
        rows.append(["all", *totals])
    return header, rows, totals


def _details(parts: Sequence[Part]) -> list[str]:
    """Value ranges, rows by number of planes with an empty cell, examples of skipped rows."""
    ranges: dict[str, list[float]] = {f: [np.inf, -np.inf] for f in FEATURES}
    missing: dict[int, int] = {}
    examples = []
    for name, q, _ in parts:
        for f, r in (q.get("ranges") or {}).items():
            if f in ranges and r.get("min") is not None and r.get("max") is not None:
                ranges[f] = [min(ranges[f][0], r["min"]), max(ranges[f][1], r["max"])]
        for k, v in (q.get("rows_by_missing_planes") or {}).items():
            missing[int(k)] = missing.get(int(k), 0) + int(v)
        for ex in (q.get("skipped_examples") or [])[:5]:
            examples.append([name, ex.get("line"), ex.get("reason"), ex.get("message")])
    page = [
        "<h2>Value ranges over all planes</h2>",
        html_table(
            ["variable", "min", "max", "unit"],
            [
                [
                    f,
                    float(lo) if np.isfinite(lo) else None,
                    float(hi) if np.isfinite(hi) else None,
                    UNITS[f],
                ]
                for f, (lo, hi) in ranges.items()
            ],
        ),
    ]
    if missing:
        page += [
            "<h2>Rows by number of planes with an empty cell</h2>",
            html_table(
                ["planes with an empty cell", "rows"], [[k, missing[k]] for k in sorted(missing)]
            ),
        ]
    if examples:
        page += [
            "<h2>Examples of skipped rows</h2>",
            html_table(["part", "line", "reason", "message"], examples),
        ]
    return page


def quality_table(
    quality_jsons: Sequence[str | Path], out: str | Path, dataset: str = ""
) -> dict[str, Any]:
    """One HTML page of the data-quality summaries (``quality/<part>.json``) of a dataset: rows
    per part (complete, with empty cells, skipped by reason), rows by number of incomplete
    planes, examples of skipped rows and the value range of each variable. Returns the totals.
    """
    parts = read_quality(quality_jsons)
    header, rows, totals = _rows_table(parts)
    page = ["<h2>Rows</h2>", html_table(header, rows), *_details(parts)]
    title = f"Data quality{': ' + dataset if dataset else ''}"
    with atomic_path(out) as tmp:
        tmp.write_text(html_page(title, page))
    return dict(zip(header[1:], totals, strict=True))


def main(argv: list[str] | None = None) -> int:
    """``python -m tracklstm.evaluate.quality --out table.html [--dataset NAME] part.json ...``
    (also ``tracklstm evaluate quality``)."""
    parser = argparse.ArgumentParser(
        prog="tracklstm evaluate quality",
        description="One HTML table of a dataset's data-quality summaries (quality/<part>.json).",
    )
    parser.add_argument("quality", nargs="+", help="quality JSON files written by to_parquet")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--dataset", default="", help="dataset name for the title")
    args = parser.parse_args(argv)

    def body() -> None:
        check_outputs({"--out": args.out}, {"quality": args.quality})
        quality_table(args.quality, args.out, args.dataset)

    return stage_cli.run(body, log)


if __name__ == "__main__":
    raise SystemExit(main())
