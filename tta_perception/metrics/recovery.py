"""Time to recover after a weather change: how many frames a method needs before its score is back
near what it reaches in the new weather.

For every change of domain in a per-frame series (the benchmark's per-frame mIoU, or an evaluator /
replay ``frames.csv``):

- the *phase* is the run of consecutive frames with the new domain;
- its *plateau* is the mean per-frame score over the phase's last half (rows ``n // 2`` onwards);
- the *running score* is the trailing mean of the last ``window`` frames **of that phase** (the
  frames before the change are never averaged in, so a good previous phase cannot hide a drop);
- the time to recover is the number of frames from the first frame of the phase to the first
  frame from which the running score stays at or above ``fraction`` x plateau until the phase ends
  (0 when it never falls below; None when it is below at the end of the phase).

Measured from below, this is only meaningful when the weather switches at once (e.g. the
``dynamic_abrupt`` sequence); across an interpolated change the domain label flips halfway through
a ramp. Scores are higher-is-better (mIoU, accuracy): pass ``100 - error`` for an error rate.
"""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

#: trailing mean of the running score, in frames (rows): 0.5 s at the sequences' 10 Hz
RECOVERY_WINDOW = 5
#: "recovered" = the running score stays at or above this fraction of the phase's plateau
RECOVERY_FRACTION = 0.9


@dataclass(frozen=True)
class Recovery:
    """One change of domain and the time the score took to recover after it."""

    change: int                  # 1 for the first change in the series, 2 for the next, ...
    frame: int                   # first frame of the new phase
    previous: str                # domain before the change
    domain: str                  # domain after it
    phase_frames: int            # rows in the new phase
    plateau: float               # mean score over the phase's last half
    threshold: float             # fraction x plateau
    start_score: float           # running score on the phase's first frame (= its own score)
    frames: Optional[int]        # frames until recovered (None: not recovered by the phase's end)

    @property
    def recovered(self) -> bool:
        return self.frames is not None

    @property
    def label(self) -> str:
        return f"{self.previous}→{self.domain}@{self.frame}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(recovered=self.recovered, label=self.label)
        return d


def time_to_recover(rows: Iterable[Sequence[Any]], *, window: int = RECOVERY_WINDOW,
                    fraction: float = RECOVERY_FRACTION) -> list[Recovery]:
    """Recovery after every domain change in ``rows`` of ``(frame index, domain, score)``.

    Rows are sorted by frame; rows with a missing or NaN score (a frame the method did not
    process) are dropped before the phases are formed."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    clean = []
    for r in rows:
        frame, domain, score = r[0], r[1], r[2]
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        clean.append((int(frame), str(domain), float(score)))
    clean.sort(key=lambda r: r[0])
    phases: list[list[tuple[int, str, float]]] = []
    for r in clean:
        if phases and phases[-1][-1][1] == r[1]:
            phases[-1].append(r)
        else:
            phases.append([r])
    out = []
    for k in range(1, len(phases)):
        phase = phases[k]
        xs = [r[0] for r in phase]
        ys = [r[2] for r in phase]
        tail = ys[len(ys) // 2:]
        plateau = math.fsum(tail) / len(tail)
        threshold = fraction * plateau
        running = [math.fsum(ys[max(0, j - window + 1): j + 1]) / (j + 1 - max(0, j - window + 1))
                   for j in range(len(ys))]
        below = [j for j, v in enumerate(running) if v < threshold]
        if not below:
            frames: Optional[int] = 0
        elif below[-1] == len(ys) - 1:
            frames = None
        else:
            frames = xs[below[-1] + 1] - xs[0]
        out.append(Recovery(k, xs[0], phases[k - 1][-1][1], phase[0][1], len(ys), plateau, threshold,
                            running[0], frames))
    return out


def recovery_summary(frames: Sequence[Optional[int]]) -> dict[str, Any]:
    """Changes, how many recovered, and the mean frames over those that did (NaN: none did), from
    :attr:`Recovery.frames` values (None = not recovered by the phase's end)."""
    done = [f for f in frames if f is not None]
    return {"changes": len(frames), "recovered": len(done),
            "mean_frames": math.fsum(done) / len(done) if done else float("nan")}


def frame_rows_from_csv(path: str | Path, method: str, metric: str = "miou") -> list[tuple[int, str, float]]:
    """``(frame, domain, score)`` rows of one method from an evaluator or replay ``frames.csv``
    (``metrics.StreamScorer.write``), ready for :func:`time_to_recover`."""
    col = f"{method}_{metric}"
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or col not in reader.fieldnames or "frame" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'frame' and {col!r} columns (not a frames CSV of method {method!r}?)")
        rows = []
        for r in reader:
            if not r["frame"]:
                raise ValueError(f"{path}: a row without a frame number (stamp {r.get('stamp_ns')}); "
                                 "time to recover needs the schedule's frame index")
            v = r[col]
            rows.append((int(r["frame"]), r["domain"], float(v) if v not in ("", "nan") else math.nan))
    return rows
