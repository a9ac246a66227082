"""Every kind of bad or unusual image decodes to RGB or fails with BadImageError."""

from __future__ import annotations

import io
import os
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shoplens.errors import BadImageError
from shoplens.imaging import crop, load_image


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None]
    return Image.fromarray(np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 80, np.uint8)], axis=2))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not an image"),
        (b"hello, I am a text file\n" * 10, "not an image"),
        (_jpeg(_gradient())[:200], "corrupt or truncated"),
        (_png(_gradient())[:60], "corrupt or truncated"),
    ],
    ids=["zero-bytes", "text", "truncated-jpeg", "truncated-png"],
)
def test_bad_bytes_raise_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(BadImageError, match=message):
        load_image(data, name="upload")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A PNG that declares 100000 x 100000 pixels with almost no data.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + _png_chunk(b"IEND", b"")
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(data)


def test_size_limits() -> None:
    with pytest.raises(BadImageError, match="over the limit"):
        load_image(b"x" * 2000, max_bytes=1000)
    with pytest.raises(BadImageError, match="over the limit"):
        load_image(_png(_gradient(64, 48)), max_pixels=1000)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(BadImageError, match="not a regular file"):
        load_image(tmp_path)


def test_special_and_huge_files_are_refused_before_any_byte_is_read(tmp_path: Path) -> None:
    """A FIFO would block open(), /dev/zero never ends, a 60 MB file would be read whole: stat first."""
    from shoplens.imaging import DEFAULT_MAX_BYTES, read_image_file

    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(60 * 1024 * 1024)  # sparse: no disk, but 60 MB to read
    cases = [(fifo, "not a regular file (a FIFO)"), (tmp_path, "not a regular file (a folder)"),
             (big, f"file is {60 * 1024 * 1024} bytes, over the limit of {DEFAULT_MAX_BYTES}")]
    if Path("/dev/zero").exists():
        (tmp_path / "zero.jpg").symlink_to("/dev/zero")
        cases += [(Path("/dev/zero"), "not a regular file (a character device)"), (tmp_path / "zero.jpg", "(a character device)")]
    start = time.monotonic()
    for path, message in cases:
        for read in (read_image_file, load_image):
            with pytest.raises(BadImageError, match=re.escape(message)):
                read(path)
    assert time.monotonic() - start < 2
    good = tmp_path / "good.png"
    good.write_bytes(_png(_gradient()))
    assert read_image_file(good) == good.read_bytes() and load_image(good).size == (64, 48)
    with pytest.raises(BadImageError, match="over the limit of 100"):
        read_image_file(good, max_bytes=100)


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "RGBA", "P", "I;16", "I", "F", "1"])
def test_modes_become_rgb(mode: str) -> None:
    img = _gradient().convert("RGBA" if mode in ("LA", "RGBA") else "RGB")
    if mode == "I;16":
        arr = (np.asarray(_gradient().convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
    else:
        img = img.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I", "F", "I;16") else "PNG"
    buf = io.BytesIO()
    img.save(buf, fmt)
    photo = load_image(buf.getvalue())
    assert photo.pixels.dtype == np.uint8 and photo.pixels.shape == (48, 64, 3)
    if mode == "I;16":  # 16-bit scaled, not clipped: the bright corner stays bright
        assert photo.pixels.max() > 200


def test_alpha_becomes_white_background() -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    photo = load_image(_png(img))
    assert tuple(photo.pixels[0, 0]) == (255, 255, 255)


def test_exif_rotation_is_applied_and_size_reported() -> None:
    img = _gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo = load_image(_jpeg(img, exif=exif.tobytes()))
    assert photo.size == (48, 64)
    assert photo.pixels.shape == (64, 48, 3)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    photo = load_image(buf.getvalue())
    assert photo.pixels.shape == (10, 20, 3)
    assert photo.pixels[5, 5, 0] > 200 and photo.pixels[5, 5, 1] < 50


def test_draft_mode_keeps_reported_size_and_crop_maps_back() -> None:
    big = _gradient(2000, 1000)
    photo = load_image(_jpeg(big, quality=90), target_size=224)
    assert photo.size == (2000, 1000)
    assert photo.pixels.shape[1] < 2000  # decoded at a reduced scale
    part = crop(photo, (1000, 500, 2000, 1000))
    assert abs(part.size[0] - 1000) <= photo.scale and abs(part.size[1] - 500) <= photo.scale


def test_fuzzed_bytes_never_raise_anything_else() -> None:
    rng = np.random.default_rng(0)
    seeds = [_jpeg(_gradient()), _png(_gradient())]
    tried = 0
    for seed in seeds:
        for _ in range(150):
            data = bytearray(seed)
            for _ in range(int(rng.integers(1, 20))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
            cut = int(rng.integers(1, len(data) + 1))
            try:
                photo = load_image(bytes(data[:cut]))
                assert photo.pixels.ndim == 3
            except BadImageError:
                pass
            tried += 1
    assert tried == 300


def _gate(width: int, height: int) -> tuple[int, int]:
    """A gate that reads photos with their longest side at 224 px."""
    scale = 224 / max(width, height)
    return round(width * scale), round(height * scale)


def test_preview_is_decoded_small_and_full_decodes_the_same_bytes_again() -> None:
    data = _jpeg(_gradient(1600, 1000), quality=90)
    full = load_image(data, target_size=320)
    photo = load_image(data, target_size=320, preview=_gate)
    assert not full.is_preview and full.pixels.shape == (500, 800, 3)  # draft mode for 320 px: half size
    assert photo.is_preview and photo.pixels.shape == (250, 400, 3)  # for the gate's 224 x 140: a quarter
    assert photo.size == full.size == (1600, 1000)
    again = photo.full()
    assert not again.is_preview and again.size == full.size
    np.testing.assert_array_equal(again.pixels, full.pixels)
    assert full.full() is full


def test_preview_keeps_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 1000 x 1600, seen 1600 x 1000
    photo = load_image(_jpeg(_gradient(1000, 1600), exif=exif.tobytes()), target_size=320, preview=_gate)
    assert photo.is_preview and photo.size == (1600, 1000) and photo.pixels.shape == (250, 400, 3)
    assert photo.full().pixels.shape == (500, 800, 3)


@pytest.mark.parametrize("image, target", [
    (_jpeg(_gradient(400, 300)), 320),  # too small to decode smaller for the gate
    (_jpeg(_gradient(1600, 1000)), 100),  # the later steps' own draft is already as small
    (_png(_gradient(1600, 1000)), 320),  # only JPEG decodes at a reduced scale
], ids=["small-jpeg", "small-target", "png"])
def test_no_preview_where_it_would_not_be_smaller(image: bytes, target: int) -> None:
    photo = load_image(image, target_size=target, preview=_gate)
    assert not photo.is_preview
    np.testing.assert_array_equal(photo.pixels, load_image(image, target_size=target).pixels)
