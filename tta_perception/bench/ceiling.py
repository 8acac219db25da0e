"""The ceiling of every benchmark table and the share of the gap to it that each method closes.

The ceiling is the target-supervised oracle, the standard upper bound of domain-adaptation papers:
the same architecture with the source model's training budget, trained with labels under every
weather (and, for classification, every corruption) of the world (``train-source --weather all``,
committed as ``<arch>_oracle``), run on the same stream as ``source``: no adaptation. It answers
"how far from possible", where the source row answers "how far from doing nothing".

The bench runs it by itself when the model is an embedded one with its committed weights and the
manifest holds its oracle; ``--ceiling-weights PATH`` names one for any other model (a public
architecture trained on labelled target data), ``--no-ceiling`` skips it. Per method and domain,
and on the table's summary columns, "gap closed" is ``metrics.gap_closed``: ``(method - source) /
(ceiling - source)`` on mIoU, ``(err_source - err_method) / (err_source - err_ceiling)`` on error,
so 1 = the ceiling either way. It is left empty (NaN) where the ceiling is less than
``MIN_GAP_POINTS`` above the source model: a ratio over a smaller gap is noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..metrics import gap_closed
from .output import write_rows_csv
from .report import aggregate, format_table
from .runner import MethodRun, RunOptions, run_method
from .streams import BenchStream

CEILING = "ceiling"          # the row's name in tables, CSV and JSON
MIN_GAP_POINTS = 1.0         # percentage points (mIoU or error) below which gap closed is not shown


@dataclass
class Ceiling:
    """The oracle model and its runs (one per stream and seed, as the methods')."""

    model: Any
    desc: str
    weights_id: str
    runs: list[MethodRun] = field(default_factory=list)

    def run(self, stream: BenchStream, opts: RunOptions) -> MethodRun:
        """The oracle as ``source`` on ``stream`` (predict only, its own BatchNorm statistics)."""
        r = run_method("source", self.model, stream, opts)
        r.method = CEILING
        self.runs.append(r)
        return r

    def row(self, stream: BenchStream) -> dict[str, Any] | None:
        return aggregate(stream, self.runs, [CEILING]).get(CEILING)


def load_ceiling(cfg, lm, task: str, num_classes: int, device, log: Callable[[str], None]) -> Ceiling | None:
    """The oracle for this run (see the module docstring), or None."""
    from ..runtime.model_loader import embedded_oracle, load_model
    from .common import model_spec

    if not getattr(cfg, "ceiling", True):
        return None
    if getattr(cfg, "ceiling_weights", None):
        spec = model_spec(task, cfg.model or lm.arch, cfg.ceiling_weights)
    else:
        name = embedded_oracle(lm.arch) if cfg.dataset == "world" and not cfg.weights and not cfg.random_init \
            else None
        if name is None:
            return None
        spec = {"model": name}
    c = load_model(**spec, task=task, num_classes=num_classes, device=device, label="--ceiling-weights",
                   architecture_label="--model")
    log(f"ceiling: {c.weights_desc} (the oracle, run without adaptation; --no-ceiling skips it)")
    return Ceiling(c.model, c.weights_desc, c.weights_id)


def with_ceiling(rows: dict[str, Any], ceiling_row: dict[str, Any] | None) -> dict[str, Any]:
    """The table's rows with the ceiling appended (for printing and the CSV; the headline and the
    "better than source" line keep using the methods' rows alone)."""
    return rows if ceiling_row is None else {**rows, CEILING: ceiling_row}


def gap_rows(rows: dict[str, Any], ceiling_row: dict[str, Any], columns: Sequence[str], task: str,
             extra: Sequence[str] = ()) -> dict[str, Any]:
    """Per method but source: gap closed per column and on ``mean`` and the ``extra`` columns (the
    summary columns are the ratio of the summary values, not a mean of per-domain ratios)."""
    if "source" not in rows:
        return {}
    lower = task == "cls"
    src = rows["source"]

    def g(row: dict[str, Any], get: Callable[[dict[str, Any]], float]) -> float:
        return gap_closed(get(row), get(src), get(ceiling_row), lower_is_better=lower, min_gap=MIN_GAP_POINTS)

    out = {}
    for m, r in rows.items():
        if m == "source":
            continue
        gr = {"cells": {c: g(r, lambda x, c=c: x["cells"][c]) for c in columns}, "mean": g(r, lambda x: x["mean"])}
        for e in extra:
            gr[e] = g(r, lambda x, e=e: x.get(e, float("nan")))
        out[m] = gr
    return out


def report_ceiling(out: Path, safe_name: str, rows: dict[str, Any], ceiling_row: dict[str, Any] | None,
                   columns: Sequence[str], task: str, extra: Sequence[str] = (),
                   ceiling: Ceiling | None = None) -> tuple[list[str], dict[str, Any]]:
    """The printed gap-closed table (in % of the gap; no lines without a ceiling) and the JSON
    block; writes ``gap_closed_<name>.csv`` (fractions, 1 = the ceiling)."""
    if ceiling_row is None:
        return [], {}
    gaps = gap_rows(rows, ceiling_row, columns, task, extra)
    block = {"model": ceiling.desc if ceiling else "", "row": ceiling_row, "gap_closed": gaps, "min_gap_points": MIN_GAP_POINTS,
             "formula": ("(err_source - err_method) / (err_source - err_ceiling)" if task == "cls"
                         else "(miou_method - miou_source) / (miou_ceiling - miou_source)")}
    if not gaps:
        return ["gap closed: needs source in --methods"], block
    keys = list(columns) + ["mean"] + list(extra)
    csv_rows = [{"method": m, **{k: (g["cells"][k] if k in g["cells"] else g[k]) for k in keys}}
                for m, g in gaps.items()]
    block["csv"] = str(write_rows_csv(Path(out) / f"gap_closed_{safe_name}.csv", csv_rows, ["method", *keys]))
    pct = {m: {"cells": {c: 100 * v for c, v in g["cells"].items()}, "mean": 100 * g["mean"],
               **{e: 100 * g[e] for e in extra}} for m, g in gaps.items()}
    title = (f"gap closed, % of the source -> ceiling gap (0 = source, 100 = ceiling; nan where the ceiling is "
             f"< {MIN_GAP_POINTS:g} point better than source; {', '.join(['mean', *extra])}: of the row's values)")
    return [format_table(pct, columns, title, extra)], block


__all__ = ["CEILING", "MIN_GAP_POINTS", "Ceiling", "gap_rows", "load_ceiling", "report_ceiling", "with_ceiling"]
