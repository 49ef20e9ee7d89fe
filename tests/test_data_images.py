"""Image reading: transparency on white, the pixel guard, corrupt data, and tensor preparation."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
import torch
from PIL import Image

from pinclip.data.images import (
    ImageError,
    check_image,
    image_to_tensor,
    images_to_batch,
    open_image,
    shrink_to_png,
)


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height in its header and holds no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_rgba_is_composited_on_white():
    # red at alpha 128 over white: R = 255, G = B = 255 * (1 - 128/255) = 127
    data = png_bytes(Image.new("RGBA", (2, 1), (255, 0, 0, 128)))
    img = open_image(data)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 127, 127)


def test_fully_transparent_la_and_palette_become_white(tmp_path):
    la = Image.new("LA", (3, 3), (0, 0))
    palette = Image.new("P", (3, 3), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.info["transparency"] = 1
    path = tmp_path / "p.png"
    palette.save(path, transparency=1)
    assert open_image(png_bytes(la)).getpixel((1, 1)) == (255, 255, 255)
    assert open_image(str(path)).getpixel((1, 1)) == (255, 255, 255)


def test_plain_rgb_keeps_its_colors(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)
    assert open_image(str(path)).getpixel((3, 3)) == (10, 20, 30)
    assert check_image(str(path)) is None


def test_pixel_guard_uses_the_header_of_a_big_cheap_image():
    data = png_bytes(Image.new("1", (10_000, 10_000)))  # 100 M pixels, 12 kB of PNG
    assert len(data) < 50_000
    reason = "image too large: 10000x10000 = 100,000,000 pixels > 1,000,000"
    assert check_image(data, max_pixels=1_000_000) == reason
    with pytest.raises(ImageError) as err:
        open_image(data, max_pixels=1_000_000)
    assert err.value.reason == reason


def test_forged_header_over_pillows_own_limit_is_refused():
    assert check_image(png_header_only(100_000, 100_000)) == "image too large: over Pillow's decompression-bomb limit"
    assert (
        check_image(png_header_only(7000, 7000))
        == "image too large: 7000x7000 = 49,000,000 pixels > 40,000,000"
    )


def test_corrupt_and_missing_images(tmp_path):
    full = png_bytes(Image.new("RGB", (40, 40), (255, 0, 0)))
    assert check_image(b"not an image at all") == "not a recognized image format"
    assert check_image(full[: len(full) // 2]).startswith("corrupt image data")
    with pytest.raises(ImageError, match="corrupt image data"):
        open_image(full[: len(full) // 2])
    assert check_image(str(tmp_path / "nope.png")) == "file not found"
    with pytest.raises(ImageError, match="file not found"):
        open_image(str(tmp_path / "nope.png"))


def test_image_to_tensor_pads_with_white_and_normalizes():
    # a 4x2 red image into 8x8: resized to 8x4, centered on rows 2..5, white elsewhere
    tensor = image_to_tensor(Image.new("RGB", (4, 2), (255, 0, 0)), size=8)
    assert tensor.shape == (3, 8, 8) and tensor.dtype == torch.float32
    assert torch.all(tensor[:, :2, :] == 1.0) and torch.all(tensor[:, 6:, :] == 1.0)
    assert torch.all(tensor[0, 2:6, :] == 1.0)
    assert torch.all(tensor[1:, 2:6, :] == -1.0)


def test_images_to_batch_shapes():
    batch = images_to_batch([Image.new("RGB", (5, 9)), Image.new("RGB", (30, 3))], size=16)
    assert batch.shape == (2, 3, 16, 16)
    assert images_to_batch([], size=16).shape == (0, 3, 16, 16)
    # black pixels map to -1, white padding to +1
    assert batch.min().item() == -1.0 and batch.max().item() == 1.0


def test_shrink_to_png_limits_the_longer_side():
    small = Image.open(io.BytesIO(shrink_to_png(Image.new("RGB", (600, 300)), 256)))
    assert small.size == (256, 128)
    same = Image.open(io.BytesIO(shrink_to_png(Image.new("RGB", (64, 40)), 256)))
    assert same.size == (64, 40)
