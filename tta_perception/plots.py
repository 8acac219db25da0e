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
