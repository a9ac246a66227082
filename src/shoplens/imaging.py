"""Safe image decoding: every way an image can be bad becomes a BadImageError.

Photos come from users (uploads, catalogues) and may be truncated, corrupt,
not images at all, decompression bombs, CMYK, 16-bit, with alpha, animated or
EXIF-rotated. :func:`load_image` turns any of them into an RGB ``Photo`` in the
orientation a person sees, or raises :class:`BadImageError` with a clear message.

A few KB can declare tens of millions of pixels (a 6300 x 6300 1-bit PNG of
one colour is 4.9 KB). What a decode holds is bounded before any pixel is
decoded (``max_decoded_bytes``), a photo larger than the caller needs is
reduced as it is converted to RGB, a strip at a time, so the full-size RGB
image never exists, and after a large decode the freed memory is handed back
to the kernel.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO, TypeVar, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import allocator
from .errors import BadBoxError, BadImageError

ImageSource = Union[str, "os.PathLike[str]", bytes, BinaryIO]
T = TypeVar("T")

#: Largest encoded image accepted, in bytes.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Largest decoded image accepted, in pixels (width x height as declared).
DEFAULT_MAX_PIXELS = 64_000_000
#: Largest decode accepted, in bytes (see :func:`decoded_bytes`). The default is what the pixel limit
#: allows at worst (4-byte pixels decoded, 3-byte RGB kept): by default only the pixel limit refuses.
DEFAULT_MAX_DECODED_BYTES = DEFAULT_MAX_PIXELS * (4 + 3)
#: After a decode that held more than this, the freed heap goes back to the kernel: Pillow holds a
#: decoded image in 16 MiB blocks, which the allocator serves from its heap and would otherwise keep
#: (see :mod:`shoplens.allocator`).
GIVE_BACK_BYTES = 32 * 2**20
#: Pixels converted to RGB at a time when a photo is converted (and reduced) in strips.
STRIP_PIXELS = 2**20
#: Bytes per pixel of Pillow's storage of a mode (4 for the others, RGB included).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}

# We check the declared size ourselves (with our own limit); PIL's global guard
# would otherwise warn or raise with its own message and threshold.
Image.MAX_IMAGE_PIXELS = None

#: Pillow's largest block of image memory (its default: 16 MiB). One block per image instead:
#: C's malloc maps a block of 32 MiB or more afresh and unmaps it when the image is freed, while
#: 16 MiB blocks come from the heap of the thread that decoded, where a worker thread's heap
#: keeps them (``malloc_trim`` does not shrink it). ``PILLOW_BLOCK_SIZE`` in the environment wins.
PILLOW_BLOCK_BYTES = 2**30
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(PILLOW_BLOCK_BYTES)


@dataclass(frozen=True)
class Photo:
    """A decoded RGB photo.

    ``pixels`` may be smaller than the image as given when the decoder could
    reduce it cheaply (JPEG draft mode); ``size`` is the size as given, after
    EXIF orientation, and is what boxes are reported in.
    """

    pixels: np.ndarray  # (H, W, 3) uint8, RGB
    size: tuple[int, int]  # (width, height) of the image as given, after EXIF
    name: str = ""
    #: Decodes the image again for every step when ``pixels`` is only a
    #: preview (see :func:`load_image`'s ``preview``); ``None`` otherwise.
    redecode: Callable[[], Photo] | None = field(default=None, repr=False, compare=False)

    @property
    def scale(self) -> float:
        """Factor from ``pixels`` coordinates to ``size`` coordinates."""
        return self.size[0] / self.pixels.shape[1]

    @property
    def is_preview(self) -> bool:
        return self.redecode is not None

    def full(self) -> Photo:
        """This photo decoded for every step: itself, unless it is a preview."""
        return self if self.redecode is None else self.redecode()


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def read_image_file(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES, name: str | None = None) -> bytes:
    """The bytes of the image file at ``path``, at most ``max_bytes``; raises :class:`BadImageError`.

    Only a regular file within the limit is read (its size is checked before
    any byte is read), so a catalogue row naming a FIFO, ``/dev/zero``, a
    folder or a huge file is refused at once instead of blocking, or filling
    memory. At most ``max_bytes + 1`` bytes are read, in case the file grows.
    """
    label = name or str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadImageError(f"{label}: no such file") from None
    except (OSError, ValueError) as err:
        raise BadImageError(f"{label}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    _check_file(label, st, max_bytes)
    try:
        # O_NONBLOCK: should a FIFO take the file's place after the stat, open() does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise BadImageError(f"{label}: cannot read: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            _check_file(label, os.fstat(f.fileno()), max_bytes)  # the file opened, not the one stat() saw
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise BadImageError(f"{label}: cannot read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise BadImageError(f"{label}: file is over the limit of {max_bytes} bytes")
    return data


def _check_file(label: str, st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise BadImageError(f"{label}: not a regular file ({_file_kind(st.st_mode)})")
    if st.st_size > max_bytes:
        raise BadImageError(f"{label}: file is {st.st_size} bytes, over the limit of {max_bytes}")


def _open_source(source: ImageSource, max_bytes: int) -> tuple[io.BytesIO, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise BadImageError(f"image is {len(data)} bytes, over the limit of {max_bytes}")
        return io.BytesIO(data), "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        return io.BytesIO(read_image_file(source, max_bytes=max_bytes)), str(source)
    if hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise BadImageError(f"image is over the limit of {max_bytes} bytes")
        return io.BytesIO(data), getattr(source, "name", "<stream>")
    raise BadImageError(f"cannot read an image from {type(source).__name__}")


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _levels(img: Image.Image, rows: int) -> tuple[float, float] | None:
    """The range a 16-bit, 32-bit or float image is scaled from to 0-255 (``None`` for the other modes).

    Taken over the whole image, ``rows`` rows at a time, so that strips converted on their own agree.
    """
    if img.mode not in _WIDE_MODES and img.mode != "F":
        return None
    lo, hi = np.inf, -np.inf
    for y in range(0, img.height, rows):
        arr = np.asarray(img.crop((0, y, img.width, min(img.height, y + rows))), dtype=np.float64)
        if img.mode == "F":
            arr = np.nan_to_num(arr)
        if arr.size:
            lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
    return (0.0, 0.0) if lo > hi else (lo, hi)


def _to_rgb(img: Image.Image, levels: tuple[float, float] | None = None) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white.

    ``levels``: the whole image's range (:func:`_levels`) when ``img`` is a strip of it.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        hi = levels[1] if levels is not None else float(arr.max()) if arr.size else 0.0
        arr = (arr / (65535.0 if hi > 255 else 255.0) * 255.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = levels if levels is not None else (float(arr.min()), float(arr.max()))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _draft_factor(size: tuple[int, int], request: tuple[int, int] | None) -> int:
    """The JPEG scale reduction (1, 2, 4 or 8) that PIL's draft mode picks for ``request``."""
    if request is None:
        return 1
    scale = min(size[0] // max(1, request[0]), size[1] // max(1, request[1]))
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def reduce_factor(size: tuple[int, int], target_size: int | None) -> int:
    """The integer reduction a (width, height) image is decoded at for ``target_size`` (1: none).

    As JPEG draft mode does: the largest that keeps both sides at least ``target_size``.
    """
    if not target_size:
        return 1
    return max(1, min(size[0] // target_size, size[1] // target_size))


def decoded_bytes(size: tuple[int, int], mode: str, factor: int = 1) -> int:
    """The bytes a decode holds: the image at ``size`` as Pillow stores ``mode``, plus the RGB photo it
    becomes, reduced by ``factor``."""
    w, h = size
    return w * h * _PIXEL_BYTES.get(mode, 4) + -(-w // factor) * -(-h // factor) * 3


def _rgb_pixels(img: Image.Image, factor: int) -> np.ndarray:
    """``img`` as (H, W, 3) uint8 RGB pixels, reduced by ``factor`` (box average).

    A large image is converted a strip of rows at a time, each reduced as it is
    converted: the full-size RGB image (4 bytes a pixel in Pillow, 3 in numpy)
    never exists. Strips are a multiple of ``factor`` rows high, so the result
    is the same as reducing the whole converted image.
    """
    w, h = img.size
    rows = max(1, STRIP_PIXELS // max(1, w)) // factor * factor or factor
    if rows >= h:
        rgb = _to_rgb(img)
        return np.asarray(rgb.reduce(factor) if factor > 1 else rgb, dtype=np.uint8)
    levels = _levels(img, rows)
    out = np.empty((-(-h // factor), -(-w // factor), 3), dtype=np.uint8)
    for y in range(0, h, rows):
        strip = _to_rgb(img.crop((0, y, w, min(h, y + rows))), levels)
        if factor > 1:
            strip = strip.reduce(factor)
        out[y // factor : y // factor + strip.height] = np.asarray(strip, dtype=np.uint8)
    return out


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    target_size: int | None = None,
    preview: Callable[[int, int], tuple[int, int]] | None = None,
) -> Photo:
    """Decode ``source`` (path, bytes or file object) into an RGB :class:`Photo`.

    ``target_size``: the longest side the caller will use; an image larger
    than twice that on both sides is decoded reduced by the largest integer
    factor that keeps both sides at least ``target_size`` (JPEGs by draft
    mode, which is much faster; other formats as they are converted to RGB):
    the same pixels after resizing.

    ``max_decoded_bytes``: the most a decode may hold, checked before any
    pixel is decoded (:func:`decoded_bytes`: the image as decoded, after any
    draft-mode reduction, plus the RGB photo it becomes).

    ``preview(width, height)``: the smallest (width, height) the caller's
    first step reads a photo of that size at (the intent gate). A JPEG that
    draft mode can decode smaller for it than for ``target_size`` is decoded
    that small: the Photo is then a preview, whose :meth:`Photo.full` decodes
    the same bytes again for ``target_size`` (only a photo that goes on to
    the later steps pays that).
    """
    stream, default_name = _open_source(source, max_bytes)
    label = name or default_name
    held = [0]
    try:
        return _decode(stream, label, max_bytes, max_pixels, max_decoded_bytes, target_size, preview, held)
    except BadImageError:
        raise
    except Image.DecompressionBombError as err:
        problem = f"decompression bomb refused ({err})"
    except UnidentifiedImageError:
        problem = "not an image, or an image format that cannot be read"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:
        problem = f"corrupt or truncated image ({err})"
    except MemoryError:
        problem = "image too large to decode in memory"
    finally:
        # Here the decode's images are freed (the error, and the frames it held, too): hand their memory back.
        if held[0] > GIVE_BACK_BYTES:
            allocator.give_back()
    raise BadImageError(f"{label}: {problem}")


def _decode(
    stream: io.BytesIO,
    label: str,
    max_bytes: int,
    max_pixels: int,
    max_decoded_bytes: int,
    target_size: int | None,
    preview: Callable[[int, int], tuple[int, int]] | None,
    held: list[int],
) -> Photo:
    """:func:`load_image`'s work; ``held[0]`` is set to the bytes the decode holds before it allocates them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img: Image.Image = Image.open(stream)
        width, height = img.size
        if width <= 0 or height <= 0:
            raise BadImageError(f"{label}: image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise BadImageError(
                f"{label}: image declares {width}x{height} pixels, over the limit of "
                f"{max_pixels} (a decompression bomb or a photo too large)"
            )
        if getattr(img, "is_animated", False):
            img.seek(0)
        redecode: Callable[[], Photo] | None = None
        jpeg = img.format == "JPEG"
        # A PNG's getexif() decodes the whole image (its eXIf chunk may follow the pixels): read it after the checks.
        orientation = _orientation(img) if jpeg else 1
        if jpeg:
            request = (target_size, target_size) if target_size and min(width, height) > 2 * target_size else None
            if preview is not None:
                turned = orientation in (5, 6, 7, 8)  # preview sizes are for the photo as seen
                pw, ph = preview(*((height, width) if turned else (width, height)))
                small = (ph, pw) if turned else (pw, ph)
                if _draft_factor((width, height), small) > _draft_factor((width, height), request):
                    request = small
                    redecode = partial(load_image, stream.getvalue(), name=label, max_bytes=max_bytes,
                                       max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes, target_size=target_size)
            if request is not None:
                img.draft("RGB", request)
        # The size and mode as decoded (draft mode has set them); a preview is not reduced further.
        factor = reduce_factor(img.size, None if redecode is not None else target_size)
        held[0] = decoded_bytes(img.size, img.mode, factor)
        if held[0] > max_decoded_bytes:
            raise BadImageError(
                f"{label}: a {width}x{height} {img.mode} image decodes to {held[0]} bytes, over the limit of "
                f"{max_decoded_bytes} (a decompression bomb or a photo too large)"
            )
        img.load()
        if not jpeg:
            orientation = _orientation(img)
        pixels = _rgb_pixels(img, factor)
    del img
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise BadImageError(f"{label}: decoded to an unusable shape {pixels.shape}")
    pixels = _orient(pixels, orientation)
    size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return Photo(pixels=np.ascontiguousarray(pixels), size=size, name=label, redecode=redecode)


def _orientation(img: Image.Image) -> int:
    return int(img.getexif().get(0x0112, 1)) if hasattr(img, "getexif") else 1


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, 3) pixels turned as EXIF ``orientation`` says, to the photo as a person sees it (a view)."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, -1)
    if orientation == 7:
        return pixels.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(pixels, 1)
    return pixels


def decode_many(
    sources: Sequence[ImageSource],
    *,
    names: Sequence[str | None] | None = None,
    target_size: int | None = None,
    pool: Executor | None = None,
) -> list[Photo | BadImageError]:
    """Decode ``sources`` (see :func:`load_image`), on ``pool`` in parallel or, without one, here in turn.

    Results come in the sources' order; an image that cannot be decoded
    gives its :class:`BadImageError` in its place, the others are unaffected.
    ``names``: each source's name in messages and on its Photo (default: the
    path, or ``<bytes>``).
    """
    if names is not None and len(names) != len(sources):
        raise ValueError(f"{len(names)} names for {len(sources)} sources")
    labels: Sequence[str | None] = names if names is not None else [None] * len(sources)

    def one(item: tuple[ImageSource, str | None]) -> Photo | BadImageError:
        try:
            return load_image(item[0], name=item[1], target_size=target_size)
        except BadImageError as err:
            return err

    items = list(zip(sources, labels))
    return list(pool.map(one, items)) if pool is not None else [one(item) for item in items]


def decode_batches(
    items: Sequence[T],
    batch: int,
    source: Callable[[T], ImageSource],
    *,
    name: Callable[[T], str] | None = None,
    target_size: int | None = None,
    workers: int = 1,
) -> Iterator[tuple[Sequence[T], list[Photo | BadImageError]]]:
    """``items`` in batches of ``batch``, each with its photos decoded (:func:`decode_many`): ``(items, photos)``.

    ``source(item)`` is what to decode, ``name(item)`` its name (default: the
    path). ``workers`` > 1 decodes each batch on that many threads (one pool
    for the whole run); 1 decodes in the calling thread. A batch is decoded
    when the consumer asks for it, not ahead.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shoplens-decode") if workers > 1 else None
    try:
        for start in range(0, len(items), batch):
            part = items[start : start + batch]
            photos = decode_many([source(it) for it in part], names=None if name is None else [name(it) for it in part],
                                 target_size=target_size, pool=pool)
            yield part, photos
    finally:
        if pool is not None:
            pool.shutdown()


def photo_from_array(pixels: np.ndarray, name: str = "") -> Photo:
    """Wrap an (H, W, 3) uint8 RGB array as a :class:`Photo`."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise BadImageError(f"{name or 'array'}: expected an (H, W, 3) uint8 RGB array")
    return Photo(pixels=np.ascontiguousarray(pixels), size=(pixels.shape[1], pixels.shape[0]), name=name)


def crop(photo: Photo, box: tuple[float, float, float, float], name: str = "") -> Photo:
    """Crop ``box`` (in ``photo.size`` coordinates) out of ``photo``."""
    s = photo.scale
    h, w = photo.pixels.shape[:2]
    x0 = int(max(0, min(w - 1, np.floor(box[0] / s))))
    y0 = int(max(0, min(h - 1, np.floor(box[1] / s))))
    x1 = int(max(x0 + 1, min(w, np.ceil(box[2] / s))))
    y1 = int(max(y0 + 1, min(h, np.ceil(box[3] / s))))
    pixels = photo.pixels[y0:y1, x0:x1]
    return Photo(
        pixels=np.ascontiguousarray(pixels),
        size=(max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s))),
        name=name or photo.name,
    )


#: A crop box: (x0, y0, x1, y1) in pixels of the photo as given (after EXIF orientation), x1 and y1 exclusive.
Box = tuple[float, float, float, float]
#: What :func:`parse_box` reads: ``"x0,y0,x1,y1"`` or four numbers (or numbers as text).
BoxLike = str | Sequence[float | str]


def parse_box(value: BoxLike | None) -> Box | None:
    """A crop box from ``"x0,y0,x1,y1"`` or four numbers (``None``: no box); :class:`BadBoxError` when malformed or empty.

    Whether it lies inside the photo is checked once the photo is decoded (:func:`crop_to_box`).
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts: Sequence[object] = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = value
    else:
        raise BadBoxError(f"box must be 'x0,y0,x1,y1' or four numbers, got {type(value).__name__}")
    if len(parts) != 4:
        raise BadBoxError(f"box must be four numbers x0,y0,x1,y1 (pixels of the photo), got {len(parts)}: {_shown(value)}")
    numbers = []
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, float, str)):
            raise BadBoxError(f"box must be four numbers x0,y0,x1,y1, got {_shown(value)}")
        try:
            number = float(part)
        except ValueError:
            raise BadBoxError(f"box must be four numbers x0,y0,x1,y1, got {_shown(value)}") from None
        if not np.isfinite(number):
            raise BadBoxError(f"box coordinates must be finite numbers, got {_shown(value)}")
        numbers.append(number)
    x0, y0, x1, y1 = numbers
    if x0 < 0 or y0 < 0:
        raise BadBoxError(f"box {_shown(value)} starts outside the photo: x0 and y0 must be at least 0")
    if x1 <= x0 or y1 <= y0:
        raise BadBoxError(f"box {_shown(value)} is empty: it needs x0 < x1 and y0 < y1")
    return (x0, y0, x1, y1)


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:80] + ("…" if len(text) > 80 else ""))


def box_as_given(box: Box) -> list[float | int]:
    """The box as a JSON list, whole numbers as integers."""
    return [int(v) if float(v).is_integer() else v for v in box]


def crop_to_box(photo: Photo, box: Box) -> tuple[Photo, tuple[float, float]]:
    """The part of ``photo`` inside ``box`` (in ``photo.size`` pixels) as a photo of its own, and its
    top-left corner in ``photo.size`` pixels (the box's, snapped to the decoded pixels).

    A preview is decoded for every step first, so the crop is cut from the
    pixels a whole-photo search would read (reduced as :func:`load_image`
    reduces large photos). :class:`BadBoxError` when the box leaves the photo.
    """
    width, height = photo.size
    if box[2] > width or box[3] > height:
        raise BadBoxError(f"{photo.name or 'photo'}: box {box_as_given(box)} is outside the photo, which is {width}x{height} pixels")
    photo = photo.full()
    s = photo.scale
    h, w = photo.pixels.shape[:2]
    corner = (max(0, min(w - 1, int(np.floor(box[0] / s)))) * s, max(0, min(h - 1, int(np.floor(box[1] / s)))) * s)
    return crop(photo, box, name=photo.name), corner


def to_pil(photo: Photo) -> Image.Image:
    return Image.fromarray(photo.pixels, "RGB")


__all__ = ["Box", "BoxLike", "ImageSource", "Photo", "box_as_given", "crop", "crop_to_box", "parse_box", "decode_batches", "decode_many", "load_image", "photo_from_array", "read_image_file", "to_pil"]
