"""render: render a weather sequence of the embedded world (frames, labels, weather), a preset sheet,
or measure rendering speed."""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from .common import parse_size

HELP = "render a weather sequence (RGB + labels), a preset sheet, or benchmark rendering speed"

SHEET_PRESETS = ("ClearNoon", "CloudyNoon", "WetCloudyNoon", "HardRainNoon", "ClearSunset", "WetCloudySunset",
                 "ClearNight", "HardRainNight", "HeavyFogNoon")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sequence", default="dynamic", help="shipped sequence name or path to a schedule YAML")
    p.add_argument("--seed", type=int, default=None, help="world seed (default: the schedule's)")
    p.add_argument("--size", type=parse_size, default=(128, 256), help="HEIGHTxWIDTH")
    p.add_argument("--frames", type=int, default=None,
                   help="stop at this frame index (default and at most: the schedule's length, unless it loops)")
    p.add_argument("--stride", type=int, default=1, help="render every k-th frame")
    p.add_argument("--workers", type=int, default=2, help="render processes")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/render/<sequence>)")
    p.add_argument("--format", choices=("png", "npz", "none"), default="png",
                   help="png: rgb/ and labels/ images; npz: one compressed array file")
    p.add_argument("--sheet", type=Path, default=None,
                   help="write a PNG sheet of one scene under each CARLA preset to this path and exit")
    p.add_argument("--bench", action="store_true", help="only measure frames per second (writes nothing)")
    p.add_argument("--no-progress", action="store_true")


def write_sheet(path: Path, size=(128, 256), seed: int = 3, t: float = 12.0) -> Path:
    import numpy as np
    from PIL import Image, ImageDraw

    from ..world.classes import colorize
    from ..world.effects import compose
    from ..world.render import Renderer
    from ..world.weather import preset

    r = Renderer(seed=seed, height=size[0], width=size[1])
    buf = r.render(t)
    tiles = [(name, compose(buf, preset(name), frame=120, noise_seed=seed)) for name in SHEET_PRESETS]
    tiles.append(("ground truth", colorize(buf.label)))
    cols = 2
    rows = (len(tiles) + cols - 1) // cols
    H, W = size
    sheet = Image.new("RGB", (cols * W, rows * (H + 14)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (name, img) in enumerate(tiles):
        x, y = (i % cols) * W, (i // cols) * (H + 14)
        sheet.paste(Image.fromarray(np.asarray(img)), (x, y + 14))
        draw.text((x + 3, y + 1), name, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from ..world.classes import colorize
    from ..world.schedule import load_schedule
    from ..world.sequences import iter_sequence

    if args.sheet:
        print(f"wrote {write_sheet(args.sheet, args.size)}")
        return 0
    sched = load_schedule(args.sequence)
    stop = args.frames if args.frames is not None else sched.frames
    if stop > sched.frames and not sched.loop:
        print(f"--frames {stop}: {sched.name} has {sched.frames} frames and does not loop; rendering up to frame "
              f"{sched.frames}", file=sys.stderr)
        stop = sched.frames
    n = len(range(0, stop, args.stride))
    frames = iter_sequence(sched, seed=args.seed, size=args.size, stop=stop, stride=args.stride,
                           workers=args.workers)
    if args.bench:
        t0 = time.perf_counter()
        count = sum(1 for _ in tqdm(frames, total=n, desc=f"render {sched.name}", unit="frame",
                                    disable=args.no_progress))
        dt = time.perf_counter() - t0
        print(f"rendered {count} frames of {sched.name} at {args.size[0]}x{args.size[1]} with weather in "
              f"{dt:.1f} s: {count / dt:.1f} frames/s ({args.workers} worker(s))")
        return 0
    out = args.out or Path("runs/render") / sched.name
    out.mkdir(parents=True, exist_ok=True)
    rgbs, labels, rows = [], [], []
    if args.format == "png":
        (out / "rgb").mkdir(exist_ok=True)
        (out / "labels").mkdir(exist_ok=True)
    for f in tqdm(frames, total=n, desc=f"render {sched.name}", unit="frame", disable=args.no_progress):
        rows.append({"frame": f.index, "time": round(f.time, 3), "domain": f.domain, **f.weather.as_dict()})
        if args.format == "png":
            Image.fromarray(f.rgb).save(out / "rgb" / f"{f.index:06d}.png")
            Image.fromarray(f.labels).save(out / "labels" / f"{f.index:06d}.png")
        elif args.format == "npz":
            rgbs.append(f.rgb)
            labels.append(f.labels)
    if args.format == "npz":
        np.savez_compressed(out / "frames.npz", rgb=np.stack(rgbs), labels=np.stack(labels))
    with open(out / "weather.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from ..world.classes import CLASS_NAMES

    (out / "classes.json").write_text(json.dumps(list(CLASS_NAMES)))
    # a strip of 6 frames across the sequence, with their labels, for a quick look
    pick = np.linspace(0, len(rows) - 1, 6).astype(int)
    strip = []
    for i in pick:
        idx = rows[i]["frame"]
        if args.format == "png":
            rgb = np.asarray(Image.open(out / "rgb" / f"{idx:06d}.png", formats=("PNG",)))
            lab = np.asarray(Image.open(out / "labels" / f"{idx:06d}.png", formats=("PNG",)))
        elif args.format == "npz":
            rgb, lab = rgbs[i], labels[i]
        else:
            continue
        strip.append(np.concatenate([rgb, colorize(lab)], axis=0))
    if strip:
        Image.fromarray(np.concatenate(strip, axis=1)).save(out / "overview.png")
    print(f"wrote {len(rows)} frames of {sched.name} to {out}/ (weather.csv, overview.png)")
    return 0
