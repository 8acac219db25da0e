"""demo: the main job on the embedded default — drive through changing weather.

Where rclpy is importable (the ``ros`` extra or a ROS install) it runs the synthetic weather loop
over DDS: ``weather_camera`` -> one ``tta_node`` per method (source and dplot, side by side on the
same frames) -> ``evaluator``, and prints the per-phase mIoU table. Without rclpy, or with
``--offline``, it runs the source model over the rendered sequence frame by frame and plots it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_device, device_of, source_model

HELP = ("drive the embedded world through changing weather: camera -> adaptation nodes (source vs dplot) -> "
        "evaluator over DDS; per-phase mIoU table + plot")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sequence", default="dynamic", help="shipped sequence name or schedule YAML")
    p.add_argument("--methods", default="source,dplot", help="loop mode: adaptation methods side by side")
    p.add_argument("--duration", type=float, default=60.0,
                   help="loop mode: seconds of camera time at 10 Hz (60 s covers one weather cycle)")
    p.add_argument("--cameras", type=int, default=1,
                   help="loop mode: cameras of the car (1..4: front, rear, narrow, wide), one adapted model "
                        "per method over all of them; scored per camera and overall")
    p.add_argument("--offline", action="store_true",
                   help="no ROS: run the source model over the rendered frames and plot per-frame mIoU")
    p.add_argument("--frames", type=int, default=1200, help="offline mode: frames to run (one weather cycle)")
    p.add_argument("--stride", type=int, default=1, help="offline mode: use every k-th frame")
    p.add_argument("--workers", type=int, default=2, help="offline mode: render processes")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    add_device(p)


def run(args: argparse.Namespace) -> int:
    from .common import refuse_unused

    # no silent no-op: each mode's options are refused in the other
    refuse_unused(args, add_arguments, [
        (args.offline, ["methods", "duration", "cameras"], "loop mode only, not --offline"),
        (not args.offline, ["frames", "stride", "workers"], "offline mode only: add --offline")])
    if not args.offline:
        from ..ros.weather_loop import available, run_weather_loop

        ok, why = available()
        if ok:
            from ..ros.dds_profile import apply

            print(f"[demo] {apply('default')}")  # large frames on one host, before the first participant
            methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
            result = run_weather_loop(args.sequence, duration=args.duration, methods=methods,
                                      device=args.device, out=args.out, cameras=args.cameras)
            print("\n" + result.delivery_text)
            print("\nmIoU % per weather phase (frames: answered and matched to the ground truth by stamp):")
            print(result.text)
            if result.camera_text:
                print("\n" + result.camera_text)
            for name, path in result.files.items():
                print(f"wrote {path}")
            return 0
        print(f"rclpy is not available ({why}); running the offline source-model demo instead")
    return run_offline(args)


def run_offline(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..evaluation import evaluate_sequence
    from ..plots import plot_stream
    from ..runtime.preprocess import frame_to_input
    from ..world.classes import colorize
    from ..world.sequences import SequenceRenderer

    device = device_of(args)
    model = source_model("seg", device=device)
    res = evaluate_sequence(model, args.sequence, stride=args.stride, frames=args.frames, workers=args.workers)
    table = res.table()
    print(f"\n{res.name}: source model mIoU per domain ({len(res.frame_index)} frames, device {device})")
    for d, v in table.items():
        print(f"  {d:<12} {v * 100:5.1f}")
    args.out.mkdir(parents=True, exist_ok=True)
    # a few frames with the source model's prediction underneath
    sr = SequenceRenderer(args.sequence)
    picks = np.linspace(0, len(res.frame_index) - 1, 5).astype(int)
    samples = []
    for i in picks:
        f = sr.frame(res.frame_index[i])
        with torch.no_grad():
            pred = model(frame_to_input(f.rgb, device=device)[None]).argmax(1)[0].cpu().numpy().astype(np.uint8)
        samples.append(np.concatenate([f.rgb, colorize(pred)], axis=0))
    plot = plot_stream(args.out / f"{res.name}_source.png", {"source": res.frame_miou}, res.frame_index,
                       res.frame_weather, res.frame_domain, title=f"{res.name}: per-frame mIoU",
                       samples=samples)
    (args.out / f"{res.name}_source.json").write_text(json.dumps({k: round(v, 4) for k, v in table.items()},
                                                                  indent=2) + "\n")
    print(f"wrote {plot}")
    return 0
