"""Outputs out: the logits of one frame -> what the node publishes and the replay writes (class ids,
confidence, overlay, top-k), as NumPy arrays; the classification JSON payload.

Segmentation maps are computed at the model size and upsampled (nearest) only at the end, so the
cost at camera resolution is a few array takes; the confidence map and the overlay are computed only
when asked for (the node asks only while someone subscribes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..metrics.resize import nearest_resize


@dataclass
class Result:
    """What the node publishes for one frame (arrays are NumPy)."""

    task: str
    # classification
    topk_ids: list[int] = field(default_factory=list)
    topk_scores: list[float] = field(default_factory=list)
    # segmentation
    class_ids: Optional[np.ndarray] = None  # (H, W) uint8, 255 = unlabeled
    confidence_u8: Optional[np.ndarray] = None  # (H, W) uint8, 0-255
    confidence: Optional[np.ndarray] = None  # (H, W) float32 in [0, 1], only when asked for
    overlay: Optional[np.ndarray] = None  # (H, W, 3) uint8
    # both
    mean_confidence: float = float("nan")
    mean_entropy: float = float("nan")
    nonfinite: bool = False  # some logits were NaN/Inf (those pixels are 255 = unlabeled)
    # from the frame path (runtime.frame_path.FrameRecord)
    quality: Any = None  # runtime.quality.Quality of the published output; None with 'quality' off
    recovery: Any = None  # runtime.guard.Recovery when the collapse guard restored a state after this frame


def palette_for(class_names: Sequence[str]) -> np.ndarray:
    """(256, 3) uint8 colour table: CityScapes/CARLA colours for known names, a fixed hash otherwise;
    255 (unlabeled) is black."""
    from ..world.classes import CLASS_ID, PALETTE

    lut = np.zeros((256, 3), dtype=np.uint8)
    known = {n: PALETTE[i] for n, i in CLASS_ID.items()}
    rng = np.random.default_rng(12345)
    spare = rng.integers(40, 256, size=(256, 3), dtype=np.uint8)
    for i, n in enumerate(list(class_names)[:255]):
        lut[i] = known.get(n, spare[i])
    return lut


def _max_and_index(logits):
    """``logits.max(0)`` (values, uint8 indices) for (C, H, W), C <= 255, about 2x faster on a CPU:
    torch's max-with-indices over the outer dimension takes a slow path, while ``amax`` and the
    one-hot trick below are vectorised. On (float) ties the largest index wins (torch: unspecified)."""
    import torch

    lmax = logits.amax(0)
    index = torch.arange(logits.shape[0], dtype=torch.uint8, device=logits.device).view(-1, 1, 1)
    return lmax, ((logits == lmax) * index).amax(0)


def _blend(colours: np.ndarray, base: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha * colours + (1 - alpha) * base`` in uint8 (OpenCV when present: ~3x faster)."""
    try:
        import cv2

        return cv2.addWeighted(colours, float(alpha), base, 1.0 - float(alpha), 0.0)
    except ImportError:
        a = int(round(alpha * 256))
        mix = colours.astype(np.uint16) * a + base.astype(np.uint16) * (256 - a) + 128
        return (mix >> 8).astype(np.uint8)


def classification_result(logits, top_k: int = 5) -> Result:
    """Top-k hypotheses of one classification frame (logits (C,))."""
    import torch

    prob = torch.softmax(logits, dim=0)
    nonfinite = not bool(torch.isfinite(logits).all())
    k = min(int(top_k), prob.numel())
    scores, idx = prob.topk(k)
    entropy = -(prob * torch.log(prob.clamp_min(1e-12))).sum()
    return Result(task="classification", topk_ids=[int(i) for i in idx.cpu()],
                  topk_scores=[float(s) for s in scores.cpu()],
                  mean_confidence=float(scores[0]), mean_entropy=float(entropy), nonfinite=nonfinite)


def segmentation_result(logits, out_size: tuple[int, int], base: Optional[np.ndarray], palette: np.ndarray,
                        overlay_alpha: float = 0.5, overlay: bool = True, confidence_float: bool = False,
                        confidence: bool = True) -> Result:
    """Class ids, confidence and overlay of one frame (logits (C, h, w)) at ``out_size``; ``base`` is
    the (H, W, 3) image the overlay is blended on (at ``out_size``)."""
    import torch

    # In as few passes over (C, H, W) as possible: max -> ids, and
    # confidence = max softmax = 1 / sum(exp(l - max)); a NaN/Inf logit makes it non-finite.
    lmax, ids = _max_and_index(logits)
    want_conf = confidence or confidence_float
    if want_conf:
        conf = torch.exp(logits - lmax).sum(0).reciprocal_()
        finite = torch.isfinite(conf) & torch.isfinite(lmax)
    else:  # a NaN logit makes the max NaN; +inf makes it inf
        finite = torch.isfinite(lmax)
    nonfinite = not bool(finite.all())
    ids = torch.where(finite, ids, torch.full_like(ids, 255)).to(torch.uint8).cpu().numpy()
    # mean confidence / entropy for diagnostics only: every 8th pixel each way is plenty
    # (a small contiguous copy; non-finite pixels drop out of the means)
    logp = torch.log_softmax(logits[:, ::8, ::8].contiguous(), dim=0)
    p = logp.exp()
    ent, pmax = -(p * logp).sum(0), p.amax(0)
    sub_ok = torch.isfinite(ent) & torch.isfinite(pmax)
    if bool(sub_ok.any()):
        mean_ent, sub_conf = float(ent[sub_ok].mean()), float(pmax[sub_ok].mean())
    else:
        mean_ent = sub_conf = float("nan")
    if want_conf:
        conf = torch.where(finite, conf, torch.zeros_like(conf)).cpu().numpy().astype(np.float32)
        mean_conf = float(conf.mean())
    else:
        conf, mean_conf = None, sub_conf
    height, width = out_size
    blend = None
    if overlay and base is not None:  # colours looked up at model size, then upsampled with the ids
        colours = nearest_resize(palette.take(ids, axis=0), height, width)
        blend = _blend(np.ascontiguousarray(colours), np.ascontiguousarray(base), overlay_alpha)
    conf8 = None
    if confidence:
        conf8 = (conf * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        conf8 = np.ascontiguousarray(nearest_resize(conf8, height, width))
    ids = nearest_resize(ids, height, width)
    return Result(task="segmentation", class_ids=np.ascontiguousarray(ids), confidence_u8=conf8,
                  confidence=np.ascontiguousarray(nearest_resize(conf, height, width)) if confidence_float else None,
                  overlay=blend, mean_confidence=mean_conf, mean_entropy=mean_ent, nonfinite=nonfinite)


def label_overlay(image: np.ndarray, text: str) -> None:
    """Write ``text`` in the top-left corner of an RGB image, in place (OpenCV where installed)."""
    try:
        import cv2
    except ImportError:
        return
    h = image.shape[0]
    scale = max(0.3, h / 480.0)
    org = (4, 4 + int(14 * scale))
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def classification_payload(result: Result, class_names: Sequence[str], stamp_ns: int,
                           frame_id: str) -> dict[str, Any]:
    """The ``classification_json`` message: stamp, frame_id, best label and the top-k."""
    top = [{"class_id": i, "class_name": class_names[i], "score": s}
           for i, s in zip(result.topk_ids, result.topk_scores)]
    best = top[0] if top else {"class_id": -1, "class_name": "", "score": float("nan")}
    return {"stamp": {"sec": stamp_ns // 1_000_000_000, "nanosec": stamp_ns % 1_000_000_000},
            "frame_id": frame_id, "label": best["class_id"], "class_name": best["class_name"],
            "score": best["score"], "top_k": top}
