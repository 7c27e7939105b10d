"""Reading and validating one image: decodable, big enough, converted to 8-bit RGB (grey replicated)."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadItem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Modes that are already 8-bit grey or colour: converted without comment.
PLAIN_MODES = {"1", "L", "RGB"}
# Modes that need a lossy or judgement-laden conversion: converted with a note, or rejected.
UNUSUAL_MODES = {"P", "PA", "LA", "RGBA", "RGBa", "La", "CMYK", "YCbCr", "LAB", "HSV",
                 "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray  # (H, W, 3) uint8
    mode: str  # the file's original mode
    note: str  # "" or what conversion was applied


def image_id(pixels: np.ndarray) -> str:
    """Content hash of the decoded pixels (not the file bytes: re-encoding keeps the id)."""
    h = hashlib.sha256()
    h.update(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return h.hexdigest()[:32]


def to_rgb_array(img: Image.Image, unusual_modes: str = "convert") -> tuple[np.ndarray, str]:
    """Convert a PIL image to (H, W, 3) uint8; returns the pixels and a note on any conversion."""
    mode = img.mode
    if mode in PLAIN_MODES:
        return np.asarray(img.convert("RGB"), dtype=np.uint8), ""
    if mode not in UNUSUAL_MODES:
        raise BadItem(f"unsupported image mode {mode!r}", "convert it to 8-bit RGB or greyscale")
    if unusual_modes == "reject":
        raise BadItem(
            f"image mode {mode!r} is not plain 8-bit RGB/greyscale",
            "convert it to RGB, or set data.on_unusual_mode: convert",
        )
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        grey = np.rint(scaled).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), f"{mode} rescaled to 8-bit ({lo:g}..{hi:g})"
    if mode in {"P", "PA"}:
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "RGBa", "LA", "La"}:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba).convert("RGB")
        return np.asarray(flat, dtype=np.uint8), f"{mode} flattened onto white"
    return np.asarray(img.convert("RGB"), dtype=np.uint8), f"{mode} converted to RGB"


def upright_image(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """The image turned as its EXIF orientation says (a portrait phone photo stands up)."""
    orientation = img.getexif().get(0x0112, 1)
    if orientation in (None, 1):
        return img, []
    return ImageOps.exif_transpose(img), [f"turned upright (EXIF orientation {orientation})"]


def downscale(pixels: np.ndarray, max_side: int, original: tuple[int, int]) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 pixels with the longer side at most ``max_side`` (0 = as they are); the note
    says so when they are smaller than the file's ``original`` (width, height)."""
    h, w = pixels.shape[:2]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
    h, w = pixels.shape[:2]
    if sorted((w, h)) == sorted(original):
        return pixels, ""
    return pixels, f"downscaled from {original[0]}x{original[1]} to {w}x{h} (data.max_image_side)"


def load_image(path: str | Path, min_size: int = 8, unusual_modes: str = "convert", max_side: int = 0) -> LoadedImage:
    """Decode and validate one image file, or raise BadItem saying why not and how to fix it.

    The pixels come upright (the EXIF orientation applied, as viewers show the photo) and, with
    ``max_side``, downscaled so that the longer side is at most that (a JPEG decodes at a reduced
    scale to begin with); each is noted."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadItem(f"cannot read the file ({exc.strerror})", "check that it exists and is readable")
    if size == 0:
        raise BadItem("empty file (0 bytes)", "re-export or re-download the image, or delete it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if max_side and max(width, height) > max_side:
                    img.draft(img.mode, (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
                img.load()
                mode = img.mode
                upright, notes = upright_image(img)
                pixels, note = to_rgb_array(upright, unusual_modes)
                notes += [note] if note else []
                pixels, note = downscale(pixels, max_side, (width, height))
                note = "; ".join(notes + ([note] if note else []))
    except BadItem:
        raise
    except UnidentifiedImageError:
        raise BadItem("not an image (no decoder recognises the content)",
                       "remove it from the data folder, or re-save it as PNG/JPEG")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadItem("image is too large to decode safely (decompression-bomb limit)",
                       "downscale it before adding it")
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadItem(f"corrupt or truncated image ({exc})", "re-export or re-download the image")
    if min(width, height) < min_size:
        raise BadItem(f"too small ({width}x{height} px, minimum {min_size} px per side)",
                       "use a larger image, or lower data.min_image_size")
    return LoadedImage(pixels=pixels, mode=mode, note=note)


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)
