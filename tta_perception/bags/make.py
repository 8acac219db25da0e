"""A bag of the embedded world: camera frames, ground truth and weather, as ``weather_camera`` would
publish them and ``ros2 bag record`` would store them (no ROS needed).

With ``views`` (several cameras of one car, ``world.views``) every view gets its own image and
ground-truth topic, ``/camera/...`` becoming ``/<view>/...`` (``/front/image_raw``,
``/front/ground_truth/class_ids``, as ``weather_camera cameras:=[...]`` publishes), all views of a
frame with the same stamp, and one ``/weather``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from . import io as B

RAW_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
COMPRESSED_FORMATS = ("jpeg", "png")
ENCODINGS = RAW_ENCODINGS + COMPRESSED_FORMATS
# A fixed default start (2023-11-14T22:13:20Z) so the same command makes the same bag; time 0 would
# read as "no time yet" to nodes running on /clock.
DEFAULT_START_S = 1_700_000_000.0


@dataclass
class BagTopics:
    image: str = "/camera/image_raw"
    truth: Optional[str] = "/camera/ground_truth/class_ids"
    weather: Optional[str] = "/weather"

    def image_topic(self, encoding: str) -> str:
        """CompressedImage goes on ``<image>/compressed``, as image_transport names it."""
        return self.image.rstrip("/") + "/compressed" if encoding in COMPRESSED_FORMATS else self.image

    def of_view(self, view: str) -> "BagTopics":
        """The topics of one view of several: ``/camera/image_raw`` -> ``/<view>/image_raw``."""
        from tta_perception.runtime.messages import view_topic

        def move(topic: Optional[str]) -> Optional[str]:
            if not topic:
                return topic
            absolute = topic.startswith("/")
            moved = view_topic(view, topic.lstrip("/")) if "/" in topic.lstrip("/") else f"{view}/{topic.lstrip('/')}"
            return "/" + moved if absolute else moved

        return BagTopics(image=move(self.image), truth=move(self.truth), weather=self.weather)


def make_bag(sequence: str, out: str | Path, *, storage: str = "mcap", frames: Optional[int] = None,
             start_frame: int = 0, stride: int = 1, size: tuple[int, int] = (128, 256),
             encoding: str = "rgb8", frame_id: str = "camera", seed: Optional[int] = None,
             start_s: float = DEFAULT_START_S, topics: BagTopics = BagTopics(),
             version: int = B.DEFAULT_BAG_VERSION, overwrite: bool = False, progress: bool = True,
             workers: int = 1, views: Sequence[str] = ()) -> dict:
    """Write frames ``start_frame, start_frame + stride, ...`` of a schedule into a new bag.

    Stamps are ``start_s`` + the frame's time in the schedule (header stamp = bag log time), so the
    bag plays back at the schedule's rate with ``ros2 bag play --clock``. ``views``: several cameras
    (module docstring); empty: the one ``topics.image`` camera (the front view).
    """
    from tqdm.auto import tqdm

    from tta_perception.runtime.messages import weather_json
    from tta_perception.world.schedule import load_schedule

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if stride < 1 or start_frame < 0:
        raise ValueError("stride must be >= 1 and start_frame >= 0")
    views = list(views)
    if views:
        from tta_perception.world.views import VIEWS

        if any(v not in VIEWS for v in views) or len(set(views)) != len(views):
            raise ValueError(f"views must be distinct views of {', '.join(VIEWS)}, got {views}")
    schedule = load_schedule(sequence)
    stop_default = schedule.frames
    n = (max(0, stop_default - start_frame) + stride - 1) // stride if frames is None else int(frames)
    if n <= 0:
        raise ValueError(f"no frames to write (sequence {schedule.name!r} has {schedule.frames} frames, "
                         f"start_frame {start_frame}, frames {frames})")
    stop = start_frame + n * stride  # past the end of a held schedule the weather holds
    start_ns = int(round(float(start_s) * 1e9))
    # view -> (image topic, truth topic, frame_id); '' is the single camera
    cams = {v: (topics.of_view(v).image_topic(encoding), topics.of_view(v).truth, f"{frame_id}_{v}")
            for v in views} or {"": (topics.image_topic(encoding), topics.truth, frame_id)}
    image_type = B.TYPE_COMPRESSED if encoding in COMPRESSED_FORMATS else B.TYPE_IMAGE
    with B.BagWriter(out, storage=storage, version=version, overwrite=overwrite) as writer:
        for image_topic, truth_topic, _ in cams.values():
            writer.add_topic(image_topic, image_type, "reliable")
            if truth_topic:
                writer.add_topic(truth_topic, B.TYPE_IMAGE, "reliable")
        if topics.weather:
            writer.add_topic(topics.weather, B.TYPE_STRING, "reliable")
        iters = [_frames(schedule, seed, size, start_frame, stop, stride, workers, view=v or "front") for v in cams]
        for fs in tqdm(zip(*iters), total=n, desc=f"make-bag {schedule.name}", unit="frame",
                       disable=not progress):
            f = fs[0]
            stamp = start_ns + int(round(f.time * 1e9))
            for (image_topic, truth_topic, fid), fv in zip(cams.values(), fs):
                if image_type == B.TYPE_COMPRESSED:
                    msg = B.compressed_message(stamp, fid, fv.rgb, encoding)
                else:
                    msg = B.rgb_image_message(stamp, fid, fv.rgb, encoding)
                writer.write(image_topic, stamp, msg)
                if truth_topic:
                    writer.write(truth_topic, stamp, B.mono8_message(stamp, fid, fv.labels))
            if topics.weather:
                text = weather_json(stamp, f.weather, f.domain, schedule=schedule.name, time=f.time,
                                    frame=f.index, frame_id=frame_id)
                writer.write(topics.weather, stamp, B.string_message(text))
        counts = dict(writer.counts)
    return {"path": str(Path(out).expanduser().absolute()), "frames": n, "storage": storage,
            "topics": counts, "image_topic": next(iter(cams.values()))[0],
            "image_topics": [c[0] for c in cams.values()], "views": views, "schedule": schedule.name,
            "start_ns": start_ns, "fps": schedule.fps / stride}


def _frames(schedule, seed, size, start, stop, stride, workers, view="front"):
    from tta_perception.world.sequences import SequenceRenderer, iter_sequence

    if schedule.loop or stop <= schedule.frames:
        yield from iter_sequence(schedule, seed=seed, size=size, start=start, stop=stop, stride=stride,
                                 workers=workers, view=view)
        return
    renderer = SequenceRenderer(schedule, seed, size, view=view)
    for i in range(start, stop, stride):
        yield renderer.frame(i)
