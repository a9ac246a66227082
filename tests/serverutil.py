"""Helpers for the server tests: a live uvicorn server in a thread, photos of every kind."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any, Self

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server tests need the [server] extra: pip install 'shoplens[server]'")

import uvicorn

KEY = "test-key-0123456789abcdef"
AUTH = {"X-API-Key": KEY}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving ``app`` on loopback in a background thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def wait_ready(self, timeout: float = 120.0) -> Self:
        """Block until ``/readyz`` answers 200 (models and indexes loaded), for tests of what comes after start-up."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as r:
                    if r.status == 200:
                        return self
            except urllib.error.HTTPError as err:
                if err.code != 503:
                    raise
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not become ready")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def spy_on_search_slots(app: Any, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, at each decode of a search photo, whether a search slot was free then.

    With ``search_concurrency=1`` a decode done inside the search's own slot
    finds none free: the list holds ``False`` for each photo decoded.
    """
    from shoplens.server import routes_search

    slots = app.state.shoplens.search_slots
    real = routes_search.load_image
    free_slot_seen: list[bool] = []

    def load_image(*args: Any, **kwargs: Any) -> Any:
        free = slots.acquire(blocking=False)  # with one slot, held by this very search if it decodes inside it
        if free:
            slots.release()
        free_slot_seen.append(free)
        return real(*args, **kwargs)

    monkeypatch.setattr(routes_search, "load_image", load_image)
    return free_slot_seen


# -- photos ---------------------------------------------------------------------
def encode(img: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def picture(seed: int = 0, size: tuple[int, int] = (160, 120), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").resize(size, Image.NEAREST).convert(mode)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def exif_rotated_jpeg(width: int, height: int, orientation: int = 6) -> bytes:
    """A JPEG stored as width x height whose EXIF says to rotate it (6: 90° clockwise)."""
    img = picture(3, (width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [picture(i, (64, 48)).convert("P") for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png() -> bytes:
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    return encode(img, "PNG")


def bad_photos() -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of photos that cannot be used."""
    jpeg = encode(picture(1, (320, 240)), "JPEG", quality=90)
    png = encode(picture(2, (320, 240)), "PNG")
    rng = np.random.default_rng(7)
    yield "truncated.jpg", jpeg[: len(jpeg) // 2]
    yield "truncated.png", png[: len(png) // 2]
    yield "corrupt.jpg", jpeg[:20] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    yield "corrupt.png", png[:33] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    yield "empty.jpg", b""
    yield "notes.txt", b"this is a text file, not a photo\n" * 20
    yield "bomb.png", png_declaring(100_000, 100_000)
    yield "html.jpg", b"<html><script>alert(1)</script></html>"


def odd_but_good_photos() -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of photos in unusual forms that must work."""
    yield "cmyk.jpg", encode(picture(4, (120, 90), "CMYK"), "JPEG")
    yield "16bit.png", sixteen_bit_png()
    yield "alpha.png", encode(picture(5, (100, 80), "RGBA"), "PNG")
    yield "rotated.jpg", exif_rotated_jpeg(300, 200)
    yield "animated.gif", animated_gif()
    yield "grey.png", encode(picture(6, (90, 90), "L"), "PNG")
    yield "palette.png", encode(picture(7, (90, 90)).convert("P"), "PNG")
    yield "photo.webp", encode(picture(8, (90, 70)), "WEBP")
