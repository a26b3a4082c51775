"""Decode and resize one image into the stored form: baseline RGB JPEG, shorter side `size`.

JPEGs are downscaled in the DCT domain first (Pillow's `draft`), which skips most of the
decoder's work when the source is much larger than the target, then resampled to the exact size.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = 64_000_000  # larger decompressed images are refused as bombs


@dataclass
class ResizeConfig:
    """How images are stored (a section of the shards build config)."""

    size: int = 256
    """Shorter side of the stored image; smaller images are kept as they are (never upscaled)."""
    quality: int = 90
    """JPEG quality of the stored image."""
    min_size: int = 32
    """Images whose shorter side is below this are refused as too_small."""


@dataclass
class Resized:
    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    orig_width: int | None = None
    orig_height: int | None = None
    status: str = "ok"
    error: str | None = None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode; transparency is composited over white."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def target_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side at `size`, aspect kept, never larger than the source."""
    scale = size / min(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_image(data: bytes, config: ResizeConfig) -> Resized:
    """Decoded, oriented, RGB, resized and re-encoded; errors come back as a status."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            orig_w, orig_h = img.size
            if min(orig_w, orig_h) < config.min_size:
                return Resized(status="too_small", error=f"{orig_w}x{orig_h} < {config.min_size}")
            # EXIF orientation swaps the sides; the draft request must be in stored orientation.
            orientation = img.getexif().get(0x0112, 1)
            w, h = (orig_h, orig_w) if orientation in (5, 6, 7, 8) else (orig_w, orig_h)
            tw, th = target_size(w, h, config.size)
            if img.format == "JPEG":
                draft = (th, tw) if orientation in (5, 6, 7, 8) else (tw, th)
                img.draft("RGB", draft)
            img.seek(0)  # first frame of an animation
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if img.size != (tw, th):
                img = img.resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=None)
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=config.quality, progressive=False, optimize=False)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Resized(status="too_large", error=f"decompression bomb: {exc}"[:200])
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return Resized(status="decode_error", error=f"{type(exc).__name__}: {exc}"[:200])
    return Resized(out.getvalue(), tw, th, orig_w, orig_h)
