"""Reading pin images safely and turning them into model input tensors (Pillow, NumPy and torch only).

Every image goes through `open_image`: its size is read from the header before any pixel is decoded
and checked against a pixel-count guard (decompression bombs), transparency is composited on white,
and the result is RGB. `image_to_tensor` resizes keeping the aspect ratio, pads to a white square
and normalizes with mean = std = 0.5 (the EfficientNet-Lite convention), giving values in [-1, 1].
"""

from __future__ import annotations

import io
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from pinclip.data.schema import MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    import torch

ImageSource = str | bytes  # a file path or the raw bytes of an encoded image
WHITE = (255, 255, 255)


class ImageError(Exception):
    """An image that cannot be used; `reason` says why in a few words (e.g. 'file not found')."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _open_lazy(src: ImageSource) -> Image.Image:
    """Open an image without decoding its pixels; ImageError for missing, unreadable or bomb files."""
    if isinstance(src, str) and not os.path.isfile(src):
        raise ImageError("file not found")
    fp = io.BytesIO(src) if isinstance(src, bytes) else src
    try:
        with warnings.catch_warnings():
            # The pixel guard below is the project's own; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError:
        raise ImageError("image too large: over Pillow's decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise ImageError("not a recognized image format") from None
    except PermissionError:
        raise ImageError("file not readable (permission denied)") from None
    except Exception as err:  # noqa: BLE001 - a format plugin may raise anything on hostile bytes
        raise ImageError(decode_failure(err)) from None


def decode_failure(err: Exception) -> str:
    """Why bytes did not decode, in a few words: 'corrupt image data (…)' (no file path)."""
    if isinstance(err, NotImplementedError):
        return f"an image variant this server cannot decode ({str(err)[:200] or 'not implemented'})"
    plain = isinstance(err, (OSError, SyntaxError, ValueError)) and not getattr(err, "filename", None)
    text = str(err) if plain else f"{type(err).__name__}: {err}"
    return f"corrupt image data ({text[:200]})"


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} = {width * height:,} pixels > {max_pixels:,}")


def composite_on_white(img: Image.Image) -> Image.Image:
    """RGB image with any transparency (RGBA, LA, P with a transparent index) blended onto white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, WHITE)
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def open_image(src: ImageSource, max_pixels: int = MAX_IMAGE_PIXELS, max_side: int | None = None) -> Image.Image:
    """Decode an image (path or bytes) to RGB on white, refusing more than `max_pixels` pixels.

    With `max_side`, a larger image is decoded at a reduced scale where the format allows it (JPEG's
    DCT scaling, `Image.draft`) and then shrunk by an integer factor (`Image.reduce`) to no less than
    max_side on its longer side, so a large upload's full-size pixels are held only briefly.
    """
    img = _open_lazy(src)
    try:
        _check_pixels(img, max_pixels)
        if max_side and img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        factor = max(img.size) // max_side if max_side else 1
        if factor > 1:
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGBA" if img.mode in ("P", "PA", "LA") else "RGB")
            img = img.reduce(factor)
        return composite_on_white(img)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError("image too large: over Pillow's decompression-bomb limit") from None
    except Exception as err:  # noqa: BLE001 - decoders raise assorted types on corrupt or unsupported data
        raise ImageError(decode_failure(err)) from None
    finally:
        img.close()


def check_image(src: ImageSource, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why the image cannot be used, or None when it looks fine. Cheap: header, size and verify()."""
    try:
        img = _open_lazy(src)
    except ImageError as err:
        return err.reason
    try:
        _check_pixels(img, max_pixels)
        img.verify()
    except ImageError as err:
        return err.reason
    except Exception as err:  # verify() raises assorted types on corrupt data
        return f"corrupt image data ({type(err).__name__}: {err})"
    finally:
        img.close()
    return None


def fit_on_white_square(img: Image.Image, size: int) -> Image.Image:
    """Resize (bilinear) so the longer side is `size`, then center on a white size x size square."""
    width, height = img.size
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = img.convert("RGB").resize(new_size, Image.Resampling.BILINEAR)
    square = Image.new("RGB", (size, size), WHITE)
    square.paste(resized, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return square


def image_to_tensor(img: Image.Image, size: int = 224) -> torch.Tensor:
    """Float tensor (3, size, size) in [-1, 1]: aspect-preserving resize, white padding, mean=std=0.5."""
    import torch  # imported here so that reading tables does not load torch

    pixels = np.asarray(fit_on_white_square(img, size), dtype=np.float32)  # (S, S, 3) in [0, 255]
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)  # (3, S, S)
    return (tensor / 255.0 - 0.5) / 0.5


def images_to_batch(images: list[Image.Image], size: int = 224) -> torch.Tensor:
    """Stack images into a float batch (B, 3, size, size), each prepared by `image_to_tensor`."""
    import torch

    if not images:
        return torch.empty(0, 3, size, size)
    return torch.stack([image_to_tensor(img, size) for img in images])  # (B, 3, S, S)


def shrink_to_png(img: Image.Image, max_side: int) -> bytes:
    """PNG bytes of an RGB image whose longer side is at most `max_side` (Lanczos downscaling)."""
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        new_size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()
