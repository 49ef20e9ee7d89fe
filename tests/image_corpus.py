"""A small file in every format Pillow can open, and hostile variants of each, for the image fuzz test.

    PYTHONPATH=. python tests/image_corpus.py        # lists the formats and how many variants

Formats Pillow can write are written by Pillow (a 6x5 RGB picture, converted where the format needs
another mode); the formats it can only read are built here byte by byte, from their headers.
`variants` then gives each file cut short at several points, with bytes flipped at seeded random
places and with header fields set to edge values (`targeted` adds the pixel formats that Pillow
opens but does not decode): what an upload of a damaged or hostile file looks like.
"""

from __future__ import annotations

import io
import random
import struct

from PIL import Image

SIDE = (6, 5)
SAVE_MODES = {"BLP": "P", "XBM": "1", "MSP": "1", "SPIDER": "F", "ICNS": "RGBA", "DDS": "RGBA"}


def _picture(mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", SIDE, (240, 30, 30))
    image.paste((30, 30, 240), (0, 0, 3, 5))
    return image.convert(mode) if mode != "RGB" else image


def saved(fmt: str) -> bytes | None:
    """The picture written by Pillow as `fmt`, or None where Pillow cannot write it here."""
    buffer = io.BytesIO()
    try:
        _picture(SAVE_MODES.get(fmt, "RGB")).save(buffer, format=fmt)
    except Exception:  # noqa: BLE001 - a writer that needs a handler or a library this machine lacks
        return None
    return buffer.getvalue()


def _fits() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2",
             "NAXIS1  =                    4", "NAXIS2  =                    4", "END"]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    return header + bytes(range(16)).ljust(2880, b"\0")


def _psd() -> bytes:
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 1, 4, 4, 8, 1)  # version, channels, height, width, depth, gray
    return head + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(range(16))


def _sun() -> bytes:
    return struct.pack(">8I", 0x59A66A95, 4, 4, 8, 16, 1, 0, 0) + bytes(range(16))


def _gbr() -> bytes:
    name = b"x\0"
    return struct.pack(">5I", 28 + len(name), 2, 4, 4, 1) + b"GIMP" + struct.pack(">I", 10) + name + bytes(16)


def _dcx() -> bytes:
    pcx = saved("PCX") or b""
    return struct.pack("<III", 0x3ADE68B1, 12, 0) + pcx


def _cur() -> bytes:
    """One 4x4 24-bit cursor: directory, BITMAPINFOHEADER (height doubled for the mask), pixels, mask."""
    entry = struct.pack("<BBBBHHII", 4, 4, 0, 0, 0, 0, 40 + 48 + 16, 22)
    dib = struct.pack("<IiiHHIIiiII", 40, 4, 8, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"\0\0\2\0" + struct.pack("<H", 1) + entry + dib + bytes(range(48)) + bytes(16)


def _pixar() -> bytes:
    head = bytearray(512)
    head[:4] = b"\x80\xe8\x00\x00"
    struct.pack_into("<HH", head, 416, 4, 4)  # height, width
    struct.pack_into("<HH", head, 424, 14, 2)  # RGB, 8 bits
    return bytes(head) + bytes(48)


def _iptc() -> bytes:
    """IPTC/NAA fields (record 3: layers, width, height, raw compression), then the image data field."""
    def tag(record: int, dataset: int, data: bytes) -> bytes:
        return bytes([0x1C, record, dataset]) + struct.pack(">H", len(data)) + data

    fields = tag(3, 60, b"\x01\x00") + tag(3, 20, b"\x00\x04") + tag(3, 30, b"\x00\x04") + tag(3, 120, b"\x01")
    return fields + b"\x1c\x08\x0a\x00\x10" + bytes(range(16))


def _flow(header: bytes, size: int) -> bytes:
    return header.ljust(size, b"\0")


HANDMADE = {
    "CUR": _cur,
    "DCX": _dcx,
    "FITS": _fits,
    "FLI": lambda: _flow(struct.pack("<IHHHHH", 128 + 16, 0xAF11, 1, 4, 4, 8), 128) + bytes(16),
    "FTEX": lambda: b"FTEX" + struct.pack("<7I", 0x4E, 4, 4, 1, 1, 1, 0) + struct.pack("<II", 0, 16) + bytes(16),
    "GBR": _gbr,
    "IMT": lambda: b"width 4\nheight 4\npixel n8\n\x0c" + bytes(range(16)),
    "IPTC": _iptc,
    "MCIDAS": lambda: _flow(struct.pack(">14I", 0, 4, 0, 0, 0, 0, 0, 0, 4, 4, 1, 0, 0, 0), 256) + bytes(16),
    "MPEG": lambda: b"\x00\x00\x01\xb3\x00\x40\x04\x00" + bytes(32),
    "PCD": lambda: _flow(b"", 2048) + b"PCD_IPI" + bytes(1600),
    "PIXAR": _pixar,
    "PSD": _psd,
    "SUN": _sun,
    "XPM": lambda: b'/* XPM */\nstatic char *x[] = {\n"2 2 1 1",\n"a c #ff0000",\n"aa",\n"aa"\n};\n',
    "XVTHUMB": lambda: b"P7 332\n#XVVERSION:\n#END_OF_COMMENTS\n2 2 255\n" + bytes(4),
    "BUFR": lambda: b"BUFR" + bytes(60),
    "GRIB": lambda: b"GRIB\0\0\0\x01" + bytes(60),
    "HDF5": lambda: b"\x89HDF\r\n\x1a\n" + bytes(60),
    "WMF": lambda: b"\xd7\xcd\xc6\x9a" + bytes(2) + struct.pack("<4hH", 0, 0, 100, 100, 1440) + bytes(6)
                   + b"\x01\x00\x09\x00" + bytes(40),
    "EPS": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\nshowpage\n%%EOF\n",
}


def sample(fmt: str) -> bytes | None:
    """A small file of this format: written by Pillow where it can, else built by hand."""
    return saved(fmt) if fmt not in HANDMADE else HANDMADE[fmt]()


def identified_as(data: bytes) -> str | None:
    """The format Pillow's open recognizes these bytes as (None when it does not)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except Exception:  # noqa: BLE001 - recognizing is all that is asked here
        return None


def corpus() -> dict[str, bytes]:
    """Format name -> a sample file, for every format Pillow can open whose sample could be made."""
    Image.init()
    found = {fmt: sample(fmt) for fmt in sorted(Image.OPEN)}
    return {fmt: data for fmt, data in found.items() if data}


FIELD_VALUES = (0, 1, 2, 4, 13, 255, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
TARGETED = {  # header fields set to values a decoder does not implement
    "DDS": [(80, struct.pack("<I", 4)), (84, b"ZZZZ")],  # a FourCC no decoder knows
    "BLP": [(8, b"\x07")],  # an unknown encoding
}


def variants(data: bytes, seed: int, flips: int = 6, fields: int = 8) -> list[bytes]:
    """The file cut short at five points, `flips` copies with 1-8 bytes overwritten at random, and
    `fields` copies with one 2- or 4-byte header field (in the first 128 bytes) set to an edge value."""
    rng = random.Random(seed)
    cuts = sorted({16, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data) - 1} - {0, len(data)})
    out = [data[:cut] for cut in cuts if 0 < cut < len(data)]
    for _ in range(flips):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        out.append(bytes(damaged))
    for _ in range(fields):
        damaged, width = bytearray(data), rng.choice((2, 4))
        at = rng.randrange(0, max(1, min(len(data), 128) - width))
        value = rng.choice(FIELD_VALUES) & ((1 << (8 * width)) - 1)
        damaged[at : at + width] = value.to_bytes(width, rng.choice(("little", "big")))
        out.append(bytes(damaged[: len(data)]))
    return out


def targeted(fmt: str, data: bytes) -> list[bytes]:
    """The sample with the header fields of TARGETED[fmt] rewritten (none for most formats)."""
    damaged = bytearray(data)
    for at, value in TARGETED.get(fmt, []):
        damaged[at : at + len(value)] = value
    return [bytes(damaged)] if fmt in TARGETED else []


if __name__ == "__main__":
    files = corpus()
    for fmt, data in files.items():
        print(f"{fmt:10s} {len(data):6d} bytes, opened as {identified_as(data)}")
    total = sum(1 + len(variants(d, 0)) + len(targeted(f, d)) for f, d in files.items())
    print(f"{len(files)} formats, {total} files with variants")
