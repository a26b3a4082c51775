"""Simple visual statistics of an image, each usable as a popularity score (the baselines), and
a face count for the bias check.

All statistics are computed on the image scaled so its shorter side is at most `STAT_SIDE`, so
that sharpness (which grows with resolution) compares like with like. Faces come from OpenCV's
bundled Haar cascade, which works offline; where OpenCV is not installed, faces are not offered.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

STAT_SIDE = 256
STATS = ("brightness", "colourfulness", "contrast", "sharpness")


@dataclass
class ImageStats:
    """The statistics of one image; `status` is "ok" or "decode_error" (then the values are NaN)."""

    brightness: float = float("nan")
    colourfulness: float = float("nan")
    contrast: float = float("nan")
    sharpness: float = float("nan")
    faces: int = -1  # -1: not detected (no OpenCV, or the image did not decode)
    status: str = "ok"
    error: str | None = None


def decode_small(data: bytes, side: int = STAT_SIDE) -> np.ndarray:
    """RGB uint8 array, downscaled (never upscaled) so the shorter side is at most `side`."""
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    scale = min(1.0, side / min(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img.draft("RGB", size)
    img = img.convert("RGB")
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma in [0, 1]."""
    return (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003): spread plus 0.3 × mean of the opponent channels (0–255 scale)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def sharpness(y: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of luma: high for crisp edges, low for blur."""
    lap = y[1:-1, :-2] + y[1:-1, 2:] + y[:-2, 1:-1] + y[2:, 1:-1] - 4 * y[1:-1, 1:-1]
    return float(lap.var()) if lap.size else 0.0


class FaceDetector:
    """OpenCV's bundled frontal-face Haar cascade (offline). Not picklable: one per process."""

    def __init__(self):
        import cv2

        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if self.cascade.empty():
            raise RuntimeError("OpenCV's Haar cascade did not load (OpenCV 5 no longer bundles it; use opencv<5)")

    def count(self, rgb: np.ndarray) -> int:
        gray = self.cv2.cvtColor(np.ascontiguousarray(rgb), self.cv2.COLOR_RGB2GRAY)
        side = max(20, min(gray.shape) // 12)  # faces smaller than this are noise at 256 px
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        return len(found)


def face_detector() -> FaceDetector | None:
    """The detector, or None where OpenCV (with its cascades) is not installed."""
    try:
        return FaceDetector()
    except (ImportError, RuntimeError, AttributeError):
        return None


def image_stats(data: bytes, faces: FaceDetector | None = None) -> ImageStats:
    """Statistics of one encoded image; an undecodable image is a status, not an exception."""
    try:
        rgb = decode_small(data)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        return ImageStats(status="decode_error", error=f"{type(exc).__name__}: {exc}"[:200])
    y = luma(rgb)
    return ImageStats(brightness=float(y.mean()), colourfulness=colourfulness(rgb), contrast=float(y.std()),
                      sharpness=sharpness(y), faces=faces.count(rgb) if faces is not None else -1)
