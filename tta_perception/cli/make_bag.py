"""make-bag: a ROS 2 bag (MCAP or sqlite3) of the embedded world's camera, ground truth and weather,
written with rosbags (no ROS needed), playable with ``ros2 bag play --clock``; several cameras of the
car with ``--cameras N`` / ``--views``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import parse_size

HELP = "write a ROS 2 bag (camera frames + ground truth + weather) of a weather sequence, without ROS"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..bags.make import DEFAULT_START_S, ENCODINGS

    p.add_argument("--sequence", default="dynamic",
                   help="shipped sequence (clear, day2night, clear2fog, clear2rain, dynamic) or schedule YAML")
    p.add_argument("--out", type=Path, required=True, help="bag folder to create (must not exist)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                   help="mcap (Jazzy/Kilted default) or sqlite3 (Humble default)")
    p.add_argument("--frames", type=int, default=None, help="frames to write (default: the whole sequence)")
    p.add_argument("--start-frame", type=int, default=0, help="first frame of the sequence")
    p.add_argument("--stride", type=int, default=1, help="write every k-th frame")
    p.add_argument("--size", type=parse_size, default=(128, 256), help="HEIGHTxWIDTH of the camera")
    p.add_argument("--encoding", choices=ENCODINGS, default="rgb8",
                   help="sensor_msgs/Image encoding (bgra8 as the CARLA bridge), or jpeg/png for a "
                        "CompressedImage on <topic>/compressed")
    p.add_argument("--topic", default="/camera/image_raw", help="camera topic")
    p.add_argument("--truth-topic", default="/camera/ground_truth/class_ids",
                   help="mono8 class-id ground truth topic ('' to leave it out)")
    p.add_argument("--weather-topic", default="/weather", help="weather JSON topic ('' to leave it out)")
    cams = p.add_mutually_exclusive_group()
    cams.add_argument("--cameras", type=int, default=None,
                      help="several cameras of the car: the first N views (1..4: front, rear, narrow, wide), "
                           "each on /<view>/image_raw + /<view>/ground_truth/class_ids, same stamps")
    cams.add_argument("--views", default=None, help="several cameras by name, comma-separated (front,wide)")
    p.add_argument("--frame-id", default="camera", help="header frame_id")
    p.add_argument("--seed", type=int, default=None, help="world seed (default: the schedule's)")
    p.add_argument("--start-time", type=float, default=DEFAULT_START_S,
                   help="stamp of frame 0 in seconds since the epoch (fixed, so bags are reproducible)")
    p.add_argument("--bag-version", type=int, choices=(8, 9), default=8,
                   help="rosbag2 metadata version: 8 is read by Humble, Jazzy and Kilted; 9 by Jazzy+ only")
    p.add_argument("--workers", type=int, default=1, help="render processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bag (only once the new "
                                                               "one is complete)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..bags.make import BagTopics, make_bag

    if args.frames is not None and args.frames <= 0:
        raise ValueError("--frames must be positive")
    from ..world.views import views_for

    views = (views_for(args.cameras) if args.cameras is not None and args.cameras > 1 else
             [v.strip() for v in args.views.split(",") if v.strip()] if args.views else [])
    if args.cameras is not None:
        views_for(args.cameras)  # 1..4, one line if not
    topics = BagTopics(image=args.topic, truth=args.truth_topic or None, weather=args.weather_topic or None)
    info = make_bag(args.sequence, args.out, storage=args.storage, frames=args.frames,
                    start_frame=args.start_frame, stride=args.stride, size=args.size, encoding=args.encoding,
                    frame_id=args.frame_id, seed=args.seed, start_s=args.start_time, topics=topics,
                    version=args.bag_version, overwrite=args.overwrite, progress=not args.no_progress,
                    workers=args.workers, views=views)
    print(f"wrote {info['path']} ({info['storage']}, {info['frames']} frames of {info['schedule']!r} at "
          f"{info['fps']:g} Hz)")
    for topic, n in info["topics"].items():
        print(f"  {topic}: {n} messages")
    print(f"play it: ros2 bag play {info['path']} --clock   |   replay it: tta-perception replay "
          f"{info['path']} --out <new bag>")
    return 0
