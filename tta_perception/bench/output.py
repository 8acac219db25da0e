"""The report format every benchmark writes (protocol, streaming, node end-to-end, GPU): the printed
table as text and Markdown, the full results as JSON, one CSV row per table row, and plots beside
them; all written atomically."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_write_text


def to_jsonable(obj: Any, digits: int | None = 4) -> Any:
    """Plain JSON: NaN/inf become null, NumPy scalars numbers, floats rounded to ``digits`` decimals
    (None: kept exact)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, digits) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        if math.isnan(v) or math.isinf(v):
            return None
        return v if digits is None else round(v, digits)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: Path, payload: dict[str, Any], digits: int | None = 4) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(payload, digits), indent=1) + "\n")


def write_rows_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """One CSV row per dict; columns in first-seen order unless given; floats with 4 decimals."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else (f"{r[c]:.4f}" if isinstance(r[c], float) else r[c])
                         for c in columns])
    return atomic_write_text(path, buf.getvalue())


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None,
                   fmt: str = "{:.1f}") -> str:
    """A Markdown table of ``rows`` (dicts) over ``columns``; numbers formatted with ``fmt``."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else fmt.format(v)
        return "–" if v is None else str(v)

    heads = list(headers or columns)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out: Path, name: str, *, text: str, payload: dict[str, Any],
                 rows: Sequence[Mapping[str, Any]], markdown: str = "", digits: int | None = 4) -> dict[str, str]:
    """``<name>.txt`` (what was printed), ``<name>.md`` (Markdown table, when given), ``<name>.json``
    (everything) and ``<name>.csv`` (the table's rows) in ``out``; returns their paths by kind."""
    out = Path(out)
    files = {"txt": str(atomic_write_text(out / f"{name}.txt", text.rstrip("\n") + "\n")),
             "json": str(write_json(out / f"{name}.json", payload, digits)),
             "csv": str(write_rows_csv(out / f"{name}.csv", rows))}
    if markdown:
        files["md"] = str(atomic_write_text(out / f"{name}.md", markdown.rstrip("\n") + "\n"))
    return files
