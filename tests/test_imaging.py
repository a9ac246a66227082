"""Every kind of bad or unusual image decodes to RGB or fails with BadImageError."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
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


def _png_of_one_colour(side: int, bit_depth: int, colour_type: int, channels: int = 1) -> bytes:
    """A side x side PNG of zeros, written row by row (never held decoded): 4.9 KB for 6300 px at 1 bit."""
    row = b"\x00" + bytes((side * bit_depth * channels + 7) // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


_BOMB_CHILD = r"""
import json, sys, threading
from shoplens.allocator import keep_freed_memory
from shoplens.imaging import load_image

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out

bomb, small = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
keep_freed_memory(64)  # as a searching process (the server) sets its allocator
load_image(small, target_size=384)  # the decoders' own first-use memory, outside the figures
before = status()
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
photo = load_image(bomb, max_pixels=40_000_000, target_size=384)
one = status()
workers = [threading.Thread(target=load_image, args=(bomb,), kwargs={"max_pixels": 40_000_000, "target_size": 384}) for _ in range(4)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(json.dumps({"shape": photo.pixels.shape, "size": photo.size, "peak_one": one["VmHWM"] - before["VmRSS"],
                  "after_workers": status()["VmRSS"] - before["VmRSS"]}))
"""


@pytest.fixture(scope="module")
def bomb_decode(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 4.9 KB 6300 x 6300 1-bit PNG (39.7 M pixels, within a 40 M limit) decoded in a fresh process."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/status and clear_refs")
    folder = tmp_path_factory.mktemp("bomb")
    (folder / "bomb.png").write_bytes(_png_of_one_colour(6300, 1, 0))
    (folder / "small.png").write_bytes(_png_of_one_colour(64, 1, 0))
    out = subprocess.run([sys.executable, "-c", _BOMB_CHILD, str(folder / "bomb.png"), str(folder / "small.png")],
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


MiB = 2**20


def test_a_tiny_bomb_is_decoded_reduced_without_the_full_size_rgb_image(bomb_decode: dict[str, object]) -> None:
    """The 1-bit image as decoded is 40 MB (1 byte a pixel in Pillow); in RGB it would be 119 MB more (159 MB in Pillow)."""
    assert bomb_decode["size"] == [6300, 6300] and bomb_decode["shape"] == [394, 394, 3]  # 6300 / 16: both sides >= 384
    assert isinstance(bomb_decode["peak_one"], int) and bomb_decode["peak_one"] < 64 * MiB, bomb_decode


def test_memory_of_large_decodes_goes_back_to_the_kernel(bomb_decode: dict[str, object]) -> None:
    """Four worker threads decoding it at once, then RSS: their heaps must not keep the decoded images."""
    assert isinstance(bomb_decode["after_workers"], int) and bomb_decode["after_workers"] < 48 * MiB, bomb_decode


def test_decoded_bytes_are_bounded_before_any_pixel_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    from shoplens.imaging import decoded_bytes

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the image was decoded")

    rgb = _png_of_one_colour(6300, 8, 2, channels=3)  # 116 KB, 6300 x 6300 RGB: 159 MB in Pillow
    assert decoded_bytes((6300, 6300), "RGB", 16) == 6300 * 6300 * 4 + 394 * 394 * 3
    with monkeypatch.context() as m:
        m.setattr(ImageFile.ImageFile, "load", no_decoding)
        with pytest.raises(BadImageError, match=r"6300x6300 RGB image decodes to 159225708 bytes, over the limit of 134217728"):
            load_image(rgb, max_pixels=40_000_000, max_decoded_bytes=128 * MiB, target_size=384)
    grey = _png(Image.new("L", (1000, 1000)))  # 1 MB decoded, 3 MB as RGB
    with pytest.raises(BadImageError, match="decodes to 4000000 bytes"):
        load_image(grey, max_decoded_bytes=3_999_999)
    assert load_image(grey, max_decoded_bytes=4_000_000).pixels.shape == (1000, 1000, 3)
    assert load_image(grey, max_decoded_bytes=1_030_000, target_size=100).pixels.shape == (100, 100, 3)  # 10x reduced: 1.03 MB


def _varied(w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["1", "L", "P", "P-transparent", "LA", "RGBA", "RGB", "I;16", "F"])
def test_reduced_decode_is_the_whole_image_converted_then_reduced(mode: str) -> None:
    """Converted in strips (3000 px wide: several strips), each reduced on its own: the same pixels as in one piece."""
    from shoplens.imaging import STRIP_PIXELS, _to_rgb

    w, h, target = 3000, 1000, 140  # factor 7: 429 x 143, the last strip and column partial
    assert STRIP_PIXELS // w < h
    base = Image.fromarray(_varied(w, h))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 200)
    elif mode == "F":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) * 3.5 - 100.0)
    elif mode == "P-transparent":
        img = base.convert("P")
        img.info["transparency"] = 7
    else:
        img = base.convert("RGBA" if mode in ("LA", "RGBA") else "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode in ("I;16", "F") else "PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as again:
        again.load()
        expected = np.asarray(_to_rgb(again).reduce(7))
    photo = load_image(buf.getvalue(), target_size=target)
    assert photo.size == (w, h) and photo.pixels.shape == (143, 429, 3)
    np.testing.assert_array_equal(photo.pixels, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_a_reduced_png(orientation: int) -> None:
    """A PNG's eXIf is read after its checks (its getexif() decodes the image); turned as Pillow turns it."""
    pixels = _varied(1200, 800)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", exif=exif.tobytes())
    photo = load_image(buf.getvalue(), target_size=200)  # factor 4
    expected = Image.fromarray(pixels).reduce(4)
    ops = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180], 4: [Image.Transpose.FLIP_TOP_BOTTOM],
           5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_270], 7: [Image.Transpose.TRANSVERSE],
           8: [Image.Transpose.ROTATE_90]}
    for op in ops.get(orientation, []):
        expected = expected.transpose(op)
    assert photo.size == ((800, 1200) if orientation >= 5 else (1200, 800))
    np.testing.assert_array_equal(photo.pixels, np.asarray(expected))


# -- decoding many --------------------------------------------------------------

def _many() -> list[bytes]:
    return [_jpeg(Image.new("RGB", (40, 30), (255, 0, 0))), b"not an image at all",
            _jpeg(Image.new("RGB", (30, 50), (0, 255, 0))), _png(_gradient())[:60], _png(Image.new("RGB", (20, 10), "white"))]


@pytest.mark.parametrize("workers", [0, 3], ids=["in-turn", "on-a-pool"])
def test_decode_many_keeps_order_and_gives_each_bad_image_its_error_in_place(workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from shoplens.imaging import Photo, decode_many

    names = ["red.jpg", "junk.jpg", "green.jpg", "truncated.png", "white.png"]
    if workers:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            out = decode_many(_many(), names=names, target_size=224, pool=pool)
    else:
        out = decode_many(_many(), names=names, target_size=224)
    assert [type(o).__name__ for o in out] == ["Photo", "BadImageError", "Photo", "BadImageError", "Photo"]
    assert [o.size for o in out if isinstance(o, Photo)] == [(40, 30), (30, 50), (20, 10)]
    assert [o.name for o in out if isinstance(o, Photo)] == ["red.jpg", "green.jpg", "white.png"]
    assert "junk.jpg" in str(out[1]) and "truncated.png" in str(out[3])
    assert decode_many([]) == []
    assert str(decode_many([b"junk"])[0]).startswith("<bytes>")  # no names: load_image's own
    with pytest.raises(ValueError, match="2 names for 1 sources"):
        decode_many([b"junk"], names=["a", "b"])


@pytest.mark.parametrize("workers", [1, 2])
def test_decode_batches_yields_each_batch_with_its_photos(tmp_path: Path, workers: int) -> None:
    from shoplens.imaging import Photo, decode_batches

    files = []
    for i, data in enumerate(_many()):
        files.append(tmp_path / f"{i}.img")
        files[-1].write_bytes(data)
    batches = list(decode_batches(files, 2, lambda f: f, target_size=64, workers=workers))
    assert [list(items) for items, _ in batches] == [files[0:2], files[2:4], files[4:5]]
    flat = [photo for _, photos in batches for photo in photos]
    assert [isinstance(p, Photo) for p in flat] == [True, False, True, False, True]
    assert [p.name for p in flat if isinstance(p, Photo)] == [str(files[0]), str(files[2]), str(files[4])]
    named = list(decode_batches(files[:1], 8, lambda f: f.read_bytes(), name=lambda f: f.stem))
    assert named[0][1][0].name == "0"  # type: ignore[union-attr]
    assert list(decode_batches([], 4, lambda f: f)) == []
    with pytest.raises(ValueError, match="batch"):
        list(decode_batches(files, 0, lambda f: f))
