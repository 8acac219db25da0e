"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019) in the standard benchmark order,
through the ``corrupt-tta`` package (``imagecorruptions`` is broken on NumPy 2)."""
from __future__ import annotations

import numpy as np

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply one corruption to uint8 images (N, H, W, 3); deterministic in ``seed``.

    corrupt-tta draws from NumPy's global RNG, so it is seeded here and its state restored after.
    """
    import corrupt_tta

    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    state = np.random.get_state()
    try:
        np.random.seed((seed * 1000003 + CORRUPTIONS.index(corruption) * 101 + int(severity)) % (2 ** 32))
        out = np.empty_like(images)
        rng = np.random.default_rng([seed, CORRUPTIONS.index(corruption), int(severity)])
        for i, img in enumerate(images):
            if corruption == "impulse_noise":  # corrupt-tta calls skimage with an unseeded RNG
                res = _impulse_noise(img, int(severity), rng)
            else:
                res = corrupt_tta.corrupt(img, severity=int(severity), corruption_name=corruption)
            out[i] = np.clip(np.asarray(res, dtype=np.float32), 0, 255).round().astype(np.uint8)
        return out
    finally:
        np.random.set_state(state)


def _impulse_noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C impulse noise (salt & pepper, amounts .03/.06/.09/.17/.27, half salt), seeded."""
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    x = img.astype(np.float32) / 255.0
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x[hit & salt] = 1.0
    x[hit & ~salt] = 0.0
    return x * 255.0
