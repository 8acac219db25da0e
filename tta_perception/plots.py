"""Figures people would rather look at than read (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(y) < k:
        return y
    y = np.asarray(y, np.float64)
    valid = np.isfinite(y)
    num = np.convolve(np.where(valid, y, 0), np.ones(k), "same")
    den = np.convolve(valid.astype(float), np.ones(k), "same")
    return num / np.maximum(den, 1)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write atomically (creating the folder) and close a figure."""
    from .atomic import atomic_write

    plt = _plt()
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return path


def plot_stream(path: str | Path, series: Mapping[str, Sequence[float]], frames: Sequence[int],
                weather: Sequence[Mapping[str, float]], domains: Sequence[str], ylabel: str = "mIoU",
                title: str = "", smooth: int = 25, samples: Sequence[np.ndarray] | None = None) -> Path:
    """Metric over the stream for each method, with the weather timeline underneath."""
    plt = _plt()
    rows = 3 if samples else 2
    ratios = [3, 1.3] + ([1.6] if samples else [])
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.2 * sum(ratios) / 1.5), gridspec_kw={"height_ratios": ratios})
    ax = axes[0]
    frames = np.asarray(frames)
    for name, ys in series.items():
        ax.plot(frames, _smooth(np.asarray(ys, float), smooth), label=f"{name}", lw=1.6)
    # shade domains
    bounds = [0] + [i for i in range(1, len(domains)) if domains[i] != domains[i - 1]] + [len(domains)]
    colors = plt.cm.Pastel2(np.linspace(0, 1, 8))
    names = list(dict.fromkeys(domains))
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            c = colors[names.index(domains[a]) % 8]
            ax.axvspan(frames[a], frames[min(b, len(frames) - 1)], color=c, alpha=0.35, lw=0)
            ax.text((frames[a] + frames[min(b, len(frames) - 1)]) / 2, 0.02, domains[a], ha="center",
                    va="bottom", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_ylabel(ylabel + (f" (running mean of {smooth})" if smooth > 1 else ""))
    ax.set_xlim(frames[0], frames[-1])
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, ncol=min(len(series), 4))
    if title:
        ax.set_title(title)
    ax = axes[1]
    for key, label in (("fog_density", "fog"), ("precipitation", "rain"), ("cloudiness", "clouds")):
        ax.plot(frames, [w[key] for w in weather], label=label, lw=1.2)
    ax.plot(frames, [(w["sun_altitude_angle"] + 90) / 1.8 for w in weather], label="sun altitude (scaled)", lw=1.2,
            color="orange")
    ax.set_ylabel("weather (0-100)")
    ax.set_xlabel("frame")
    ax.set_xlim(frames[0], frames[-1])
    ax.legend(loc="upper right", fontsize=7, ncol=4)
    ax.grid(alpha=0.3)
    if samples:
        axes[2].imshow(np.concatenate(list(samples), axis=1))
        axes[2].axis("off")
    return save_figure(fig, path)


def plot_bars(path: str | Path, values: Mapping[str, float], ylabel: str, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(values)), 3.6))
    ax.bar(list(values), list(values.values()), color="steelblue")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_grouped_bars(path: str | Path, panels: Mapping[str, Mapping[str, Mapping[str, float]]], ylabel: str,
                      title: str = "") -> Path:
    """One panel per entry of ``panels`` ({panel: {group: {series: value}}}), a bar per series in
    each group (e.g. mIoU per bag, one bar per method)."""
    plt = _plt()
    widths = [max(2, len(groups)) for groups in panels.values()]
    fig, axes = plt.subplots(1, len(panels), figsize=(min(18, 3 + 0.7 * sum(widths)), 4.2),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    series = list(dict.fromkeys(k for groups in panels.values() for g in groups.values() for k in g))
    colors = plt.cm.tab10(np.arange(len(series)) % 10)
    step = 0.8 / max(1, len(series))
    for ax, (name, groups) in zip(axes[0], panels.items()):
        x = np.arange(len(groups))
        for j, s in enumerate(series):
            ax.bar(x + (j - (len(series) - 1) / 2) * step, [g.get(s, np.nan) for g in groups.values()], step,
                   label=s, color=colors[j])
        ax.set_xticks(x)
        ax.set_xticklabels(list(groups), rotation=45 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center",
                           fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_lanes(path: str | Path, spans: Sequence[tuple[str, float, float, str, str]], title: str = "",
               xlabel: str = "seconds") -> Path:
    """A timeline: ``(lane, start_s, duration_s, colour key, label)`` spans, one row per lane."""
    plt = _plt()
    lanes = list(dict.fromkeys(s[0] for s in spans))
    keys = list(dict.fromkeys(s[3] for s in spans))
    colors = plt.cm.tab10(np.arange(len(keys)) % 10)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.5 * len(lanes)))
    for lane, start, dur, key, label in spans:
        y = lanes.index(lane)
        ax.barh(y, dur, left=start, height=0.6, color=colors[keys.index(key)], edgecolor="white")
        ax.text(start + dur / 2, y, label, ha="center", va="center", fontsize=7, clip_on=True)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(lanes, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in range(len(keys))]
    ax.legend(handles, keys, fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_throughput(path: str | Path, points: Sequence[tuple[int, float, float | None]]) -> Path:
    """Throughput against parallel workers, ``(workers, frames per second, CPU cores the work got)``
    per run: each run a dot, the mean a line, the linear ideal from one worker dashed; with the cores
    a second panel (what the machine gave the runs, against one core per worker)."""
    plt = _plt()
    cores = [p for p in points if p[2] is not None]
    fig, axes = plt.subplots(1, 2 if cores else 1, figsize=(10 if cores else 5.5, 3.8), squeeze=False)
    xs = sorted({p[0] for p in points})
    panels = [(axes[0][0], [(p[0], p[1]) for p in points], "frames per second", "throughput")]
    if cores:
        panels.append((axes[0][1], [(p[0], p[2]) for p in cores], "CPU cores used by the tasks", "cores the tasks got"))
    for ax, pts, ylabel, title in panels:
        means = {x: float(np.mean([y for px, y in pts if px == x])) for x in xs if any(px == x for px, _ in pts)}
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", alpha=0.6, label="runs")
        ax.plot(list(means), list(means.values()), "-", lw=2, label="mean")
        if 1 in means:
            ideal = [means[1] * x for x in means] if title == "throughput" else list(means)
            ax.plot(list(means), ideal, "--", color="grey", label="linear" if title == "throughput" else "one per worker")
        for x, y in means.items():
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8)
        ax.set_xlabel("bags at once (workers)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
