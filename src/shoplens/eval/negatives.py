"""Non-product photos a program can make, to test and train the intent gate.

People upload many photos that are not product photos: documents, charts,
screenshots, memes, noise, pets, the sky. :func:`generate_negatives` makes such
images deterministically from a seed, kind by kind:

``document``   text pages, receipts, slides and tables drawn with PIL;
``chart``      bar, line, pie, scatter and area charts drawn with PIL;
``screenshot`` web pages (articles, forms, dashboards, chats, inboxes, code)
               rendered by headless Chromium; skipped when it is not installed;
``noise``      noise, gradients, flat colours, stripes and checkerboards;
``meme``       a non-product photo (or a flat background) with big caption text;
``photo``      the photos and pictures scikit-image ships (a dev dependency),
               only those that show no product: see :data:`SKIMAGE_PHOTOS`;
``cartoon``    flat-coloured and line-drawn cartoons: outlined shapes, stick
               figures, round characters, speech bubbles, strips of panels;
``fractal``    Mandelbrot and Julia set renders;
``abstract``   abstract art and wallpaper-like images (shapes, Mondrian grids,
               low-poly, bokeh, waves, Voronoi cells, brush strokes, nebulae,
               plasma, mountain silhouettes, spirals);
``captioned``  memes in the common layouts (outlined top/bottom caption in a
               heavy sans, a post's text band, demotivational poster, a dark
               strip, two stacked panels) over photos, cartoons, abstract art
               or fractals; ``photos=`` adds your own photos as pictures.

Each image is written to ``out_dir`` and listed in ``out_dir/negatives.csv``
(``image,intent,kind,source``; the CSV ``shoplens train-intent`` reads).
Image ``i`` of a kind depends only on ``(seed, kind, i)``, so a smaller
``n_per_kind`` gives a prefix of a larger one.
"""

from __future__ import annotations

import csv
import html
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..errors import MissingDependencyError

logger = logging.getLogger(__name__)

KINDS = ("document", "chart", "screenshot", "noise", "meme", "photo", "cartoon", "fractal", "abstract", "captioned")
#: Kinds made by drawing alone (no scikit-image, no Chromium, no photos).
DRAWN_KINDS = ("document", "chart", "noise", "cartoon", "fractal", "abstract")

#: scikit-image's bundled pictures and the intent a person would give each.
#: ``None`` marks a picture that is honestly ambiguous: it is neither used as a
#: negative nor as a product. Pictures of things a shop sells are not negatives.
SKIMAGE_PHOTOS: dict[str, tuple[str | None, str]] = {
    "astronaut": ("non_product", "portrait of an astronaut"),
    "cat": ("non_product", "a cat (pet)"),
    "chelsea": ("non_product", "a cat (pet)"),
    "rocket": ("non_product", "a rocket launch"),
    "hubble_deep_field": ("non_product", "galaxies"),
    "moon": ("non_product", "the moon's surface"),
    "coins": ("non_product", "old coins on a table"),
    "brick": ("non_product", "brick wall texture"),
    "grass": ("non_product", "grass texture"),
    "gravel": ("non_product", "gravel texture"),
    "page": ("non_product", "a scanned page of text"),
    "text": ("non_product", "printed and painted text"),
    "immunohistochemistry": ("non_product", "microscopy"),
    "cell": ("non_product", "microscopy"),
    "retina": ("non_product", "retina scan"),
    "colorwheel": ("non_product", "a colour wheel"),
    "logo": ("non_product", "the scikit-image logo"),
    "horse": ("non_product", "a horse silhouette"),
    "checkerboard": ("non_product", "checkerboard"),
    "shepp_logan_phantom": ("non_product", "a medical imaging phantom"),
    "clock": ("other_product", "a wall clock: a product"),
    "coffee": (None, "a cup of coffee on a saucer: tableware, or a served drink"),
    "stereo_motorcycle": (None, "a motorbike in a garage: a vehicle a dealer could sell"),
    "camera": (None, "a man behind a camera on a tripod: the camera and tripod are products"),
}

_VOCABULARY = (
    "the of and to in is you that it he was for on are as with his they at be this from have or by one "
    "had not but what all were when we there can an your which their said if do will each about how up "
    "out them then she many some so these would other into has more her two like him see time could no "
    "make than first been its who now people my made over did down only way find use may water long "
    "little very after words called just where most know get through back much before go good new write "
    "our used me man too any day same right look think also around another came come work three word "
    "must because does part even place well such here take why things help put years different away "
    "again off went old number great tell men say small every found still between name should home big "
    "give air line set own under read last never us left end along while might next sound below saw "
    "something thought both few those always looked show large often together asked house world going "
    "want school important until form food keep children feet land side without boy once animals life "
    "enough took sometimes four head above kind began almost live page got earth need far hand high year "
    "mother light parts country father let night following picture being study second eyes soon times "
    "story boys since white days ever paper hard near sentence better best across during today others "
    "however sure means knew try told young miles sun ways thing whole hear example heard several change "
    "answer room sea against top turned learn point city play toward five using himself usually report "
    "meeting budget quarter revenue project update notes agenda summary results growth market team "
    "review draft policy"
)
_WORDS = tuple(_VOCABULARY.split())


# ---------------------------------------------------------------- helpers

def _rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, KINDS.index(kind), index])


def _words(rng: np.random.Generator, n: int, capital: bool = True) -> str:
    text = " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), n))
    return text[:1].upper() + text[1:] if capital else text


def _font(size: int, bold: bool = False, mono: bool = False, serif: bool = False) -> ImageFont.ImageFont:
    """A TrueType font from the system's DejaVu/Liberation families, else PIL's own."""
    family = "DejaVuSansMono" if mono else ("DejaVuSerif" if serif else "DejaVuSans")
    name = f"{family}-Bold.ttf" if bold else f"{family}.ttf"
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return ImageFont.truetype(path, size)  # type: ignore[return-value]
    return ImageFont.load_default(size=size)  # type: ignore[return-value]


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    if line:
        lines.append(line)
    return lines


# ---------------------------------------------------------------- documents

def _document(rng: np.random.Generator) -> Image.Image:
    style = int(rng.integers(0, 5))
    paper = (255, 255, 255) if rng.random() < 0.6 else _color(rng, 225, 256)
    ink = _color(rng, 0, 60)
    if style == 1:  # receipt
        w, h = int(rng.integers(280, 380)), int(rng.integers(700, 1000))
    elif style == 2:  # slide
        w, h = 1280, 720
    else:
        w, h = 850, 1100
    img = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(img)
    if style == 1:
        font = _font(16, mono=True)
        y = 30
        d.text((w // 2, y), _words(rng, 2).upper(), font=_font(22, bold=True, mono=True), fill=ink, anchor="mt")
        y += 60
        total = 0.0
        while y < h - 120:
            price = float(rng.integers(50, 2500)) / 100
            total += price
            d.text((20, y), _words(rng, 2, False)[:18].upper(), font=font, fill=ink)
            d.text((w - 20, y), f"{price:.2f}", font=font, fill=ink, anchor="ra")
            y += 24
        d.line((20, y, w - 20, y), fill=ink, width=2)
        d.text((20, y + 12), "TOTAL", font=_font(18, bold=True, mono=True), fill=ink)
        d.text((w - 20, y + 12), f"{total:.2f}", font=_font(18, bold=True, mono=True), fill=ink, anchor="ra")
        return img
    if style == 2:
        accent = _color(rng, 0, 200)
        d.rectangle((0, 0, w, 120), fill=accent)
        d.text((60, 35), _words(rng, int(rng.integers(2, 6))), font=_font(48, bold=True), fill=(255, 255, 255))
        y = 180
        for _ in range(int(rng.integers(3, 7))):
            d.ellipse((70, y + 14, 84, y + 28), fill=accent)
            d.text((110, y), _words(rng, int(rng.integers(3, 9))), font=_font(34), fill=ink)
            y += 80
        return img
    if style == 3:  # table / spreadsheet
        cols, rows = int(rng.integers(3, 7)), int(rng.integers(12, 30))
        cw, rh = (w - 100) // cols, 28
        font = _font(15)
        d.text((50, 40), _words(rng, 4), font=_font(26, bold=True), fill=ink)
        for r in range(rows):
            y = 100 + r * rh
            if r == 0:
                d.rectangle((50, y, 50 + cw * cols, y + rh), fill=_color(rng, 180, 240))
            for c in range(cols):
                d.rectangle((50 + c * cw, y, 50 + (c + 1) * cw, y + rh), outline=(150, 150, 150))
                cell = _words(rng, 1) if r == 0 or c == 0 else f"{rng.normal(100, 60):.1f}"
                d.text((56 + c * cw, y + 6), cell, font=font, fill=ink)
        return img
    # a page of prose: a letter, an article or a form
    serif = bool(rng.random() < 0.5)
    size = int(rng.integers(14, 22))
    font = _font(size, serif=serif)
    margin = int(rng.integers(60, 110))
    y = margin
    d.text((margin, y), _words(rng, int(rng.integers(3, 8))), font=_font(size + 12, bold=True, serif=serif), fill=ink)
    y += size * 3
    while y < h - margin - size * 2:
        if style == 4 and rng.random() < 0.4:  # a form field
            label = _words(rng, int(rng.integers(1, 3))) + ":"
            d.text((margin, y), label, font=font, fill=ink)
            x0 = margin + int(d.textlength(label, font=font)) + 10
            d.line((x0, y + size + 2, w - margin, y + size + 2), fill=ink, width=1)
            y += size * 2 + 6
            continue
        for line in _wrap(d, _words(rng, int(rng.integers(20, 70))) + ".", font, w - 2 * margin):
            if y > h - margin - size:
                break
            d.text((margin, y), line, font=font, fill=ink)
            y += int(size * 1.5)
        y += size
    return img


# ---------------------------------------------------------------- charts

def _chart(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.choice([800, 900, 1000])), int(rng.choice([500, 600, 700]))
    dark = rng.random() < 0.2
    bg = (30, 30, 36) if dark else (255, 255, 255)
    fg = (220, 220, 220) if dark else (40, 40, 40)
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    palette = [_color(rng, 30, 230) for _ in range(8)]
    d.text((w // 2, 20), _words(rng, int(rng.integers(2, 6))), font=_font(24, bold=True), fill=fg, anchor="mt")
    style = int(rng.integers(0, 5))
    if style == 2:  # pie
        values = rng.random(int(rng.integers(3, 8))) + 0.2
        start = 0.0
        r = min(w, h) // 3
        cx, cy = w // 2 - 80, h // 2 + 20
        for k, v in enumerate(values / values.sum()):
            d.pieslice((cx - r, cy - r, cx + r, cy + r), start, start + 360 * v, fill=palette[k % 8], outline=bg)
            d.rectangle((w - 200, 100 + 30 * k, w - 185, 115 + 30 * k), fill=palette[k % 8])
            d.text((w - 175, 100 + 30 * k), _words(rng, 1), font=_font(15), fill=fg)
            start += 360 * v
        return img
    x0, y0, x1, y1 = 80, 70, w - 40, h - 60
    font = _font(13)
    for k in range(6):  # grid and y ticks
        y = y1 - (y1 - y0) * k / 5
        d.line((x0, y, x1, y), fill=(70, 70, 80) if dark else (225, 225, 225))
        d.text((x0 - 10, y), f"{k * int(rng.integers(1, 50)) * 10}", font=font, fill=fg, anchor="rm")
    d.line((x0, y0, x0, y1), fill=fg, width=2)
    d.line((x0, y1, x1, y1), fill=fg, width=2)
    n = int(rng.integers(5, 25))
    xs = np.linspace(x0 + 20, x1 - 20, n)
    if style == 0:  # bars (possibly grouped)
        groups = int(rng.integers(1, 4))
        bw = (x1 - x0) / n / (groups + 1)
        for g in range(groups):
            for x in xs:
                v = rng.random()
                d.rectangle((x + g * bw - bw * groups / 2, y1 - v * (y1 - y0), x + (g + 1) * bw - bw * groups / 2, y1),
                            fill=palette[g])
        for x in xs[:: max(1, n // 8)]:
            d.text((x, y1 + 8), _words(rng, 1, False)[:6], font=font, fill=fg, anchor="mt")
    elif style in (1, 4):  # lines / filled areas
        for g in range(int(rng.integers(1, 5))):
            ys = np.clip(np.cumsum(rng.normal(0, 0.08, n)) + rng.random(), 0.02, 0.98)
            pts = [(float(x), float(y1 - v * (y1 - y0))) for x, v in zip(xs, ys)]
            if style == 4:
                d.polygon(pts + [(pts[-1][0], y1), (pts[0][0], y1)], fill=palette[g])
            d.line(pts, fill=palette[g], width=3)
            for p in pts:
                d.ellipse((p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3), fill=palette[g])
    else:  # scatter
        for g in range(int(rng.integers(1, 4))):
            c = rng.random(2)
            for _ in range(int(rng.integers(30, 200))):
                px, py = np.clip(c + rng.normal(0, 0.15, 2), 0.02, 0.98)
                x, y = x0 + px * (x1 - x0), y1 - py * (y1 - y0)
                d.ellipse((x - 4, y - 4, x + 4, y + 4), fill=palette[g])
    d.text((w // 2, h - 25), _words(rng, 2), font=font, fill=fg, anchor="mt")
    return img


# ---------------------------------------------------------------- noise

def _noise(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(300, 900)), int(rng.integers(300, 900))
    style = int(rng.integers(0, 8))
    arr: np.ndarray
    if style == 0:  # white noise, colour or grey
        arr = rng.integers(0, 256, (h, w, 3) if rng.random() < 0.5 else (h, w, 1))
    elif style == 1:  # smooth noise (clouds) at a random scale
        k = int(rng.integers(2, 16))
        small = rng.random((k, k, 3)) * 255
        img = Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        return img.filter(ImageFilter.GaussianBlur(2))
    elif style == 2:  # linear gradient between two colours
        a, b = np.array(_color(rng)), np.array(_color(rng))
        angle = rng.random() * np.pi
        yy, xx = np.mgrid[0:h, 0:w]
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = ((t - t.min()) / max(1e-6, np.ptp(t)))[..., None]
        arr = a * (1 - t) + b * t
    elif style == 3:  # radial gradient
        a, b = np.array(_color(rng)), np.array(_color(rng))
        yy, xx = np.mgrid[0:h, 0:w]
        cx, cy = rng.random() * w, rng.random() * h
        t = np.hypot(xx - cx, yy - cy)
        t = (t / t.max())[..., None]
        arr = a * (1 - t) + b * t
    elif style == 4:  # flat colour, a little sensor noise
        arr = np.array(_color(rng))[None, None, :] + rng.normal(0, 3, (h, w, 3))
    elif style == 5:  # stripes
        period = int(rng.integers(4, 60))
        a, b = np.array(_color(rng)), np.array(_color(rng))
        yy, xx = np.mgrid[0:h, 0:w]
        t = (((xx if rng.random() < 0.5 else yy + xx) // period) % 2)[..., None]
        arr = a * (1 - t) + b * t
    elif style == 6:  # checkerboard
        period = int(rng.integers(8, 80))
        yy, xx = np.mgrid[0:h, 0:w]
        t = (((xx // period) + (yy // period)) % 2)[..., None]
        arr = np.array(_color(rng)) * (1 - t) + np.array(_color(rng)) * t
    else:  # salt and pepper on grey
        arr = np.full((h, w, 1), float(rng.integers(60, 200)))
        mask = rng.random((h, w)) < rng.uniform(0.02, 0.3)
        arr[mask, 0] = rng.choice([0.0, 255.0], int(mask.sum()))
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return Image.fromarray(arr)


# ---------------------------------------------------------------- photos (scikit-image)

def _skimage_data() -> object:
    try:
        import skimage.data
    except ImportError:
        raise MissingDependencyError("scikit-image", "dev", "non-product photos from scikit-image") from None
    return skimage.data


def skimage_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled pictures as an RGB PIL image."""
    data = _skimage_data()
    arr = getattr(data, name)()
    if isinstance(arr, tuple):  # stereo pairs
        arr = arr[0]
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 4:
        return _flatten(Image.fromarray(arr, "RGBA"))
    return Image.fromarray(arr[..., :3])


def _flatten(img: Image.Image) -> Image.Image:
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, img).convert("RGB")


def _negative_photo_names() -> list[str]:
    return [name for name, (intent, _) in SKIMAGE_PHOTOS.items() if intent == "non_product"]


def _jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (50-100 % of each side), maybe mirrored: a new view of a photo."""
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x, y, x + cw, y + ch))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def _photo(rng: np.random.Generator, index: int) -> Image.Image:
    names = _negative_photo_names()
    img = skimage_photo(names[index % len(names)])
    # The first pass shows each picture as shipped; later passes show new views.
    return img if index < len(names) else _jitter(img, rng)


# ---------------------------------------------------------------- memes

_MEME_BASES = ("astronaut", "cat", "chelsea", "rocket", "moon", "hubble_deep_field", "coins", "brick")


def _meme(rng: np.random.Generator) -> Image.Image:
    if rng.random() < 0.8:
        base = _jitter(skimage_photo(_MEME_BASES[int(rng.integers(0, len(_MEME_BASES)))]), rng)
    else:
        base = _noise(rng)
    scale = 600 / max(base.size)
    base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))))
    if rng.random() < 0.3:  # caption in a white band above the picture
        font = _font(30, bold=False)
        probe = ImageDraw.Draw(base)
        lines = _wrap(probe, _words(rng, int(rng.integers(6, 20))), font, base.width - 40)
        band = 30 + 40 * len(lines)
        img = Image.new("RGB", (base.width, base.height + band), (255, 255, 255))
        img.paste(base, (0, band))
        d = ImageDraw.Draw(img)
        for k, line in enumerate(lines):
            d.text((20, 15 + 40 * k), line, font=font, fill=(0, 0, 0))
        return img
    img = base.copy()
    d = ImageDraw.Draw(img)
    size = int(rng.integers(40, 64))
    font = _font(size, bold=True)
    for top in (True, False):
        if not top and rng.random() < 0.3:
            continue
        lines = _wrap(d, _words(rng, int(rng.integers(2, 8))).upper(), font, img.width - 30)[:2]
        for k, line in enumerate(lines):
            y = 10 + k * (size + 6) if top else img.height - (len(lines) - k) * (size + 6) - 10
            d.text((img.width // 2, y), line, font=font, fill=(255, 255, 255), anchor="ma",
                   stroke_width=max(2, size // 14), stroke_fill=(0, 0, 0))
    return img


# ---------------------------------------------------------------- heavy fonts (captions)

#: Heavy sans (and a few serif) fonts of Debian's fonts-dejavu and fonts-liberation packages: what
#: meme captions are set in (Impact is not packaged; these are the nearest free faces).
_HEAVY_FONTS = (
    "dejavu/DejaVuSans-Bold.ttf", "dejavu/DejaVuSansCondensed-Bold.ttf", "liberation/LiberationSans-Bold.ttf",
    "liberation/LiberationSansNarrow-Bold.ttf", "dejavu/DejaVuSerif-Bold.ttf", "liberation/LiberationSerif-Bold.ttf",
)


def _heavy_font(rng: np.random.Generator, size: int, sans: bool = True) -> ImageFont.ImageFont:
    names = _HEAVY_FONTS[:4] if sans else _HEAVY_FONTS
    for root in ("/usr/share/fonts/truetype", "/usr/share/fonts"):
        found = [os.path.join(root, n) for n in names if os.path.exists(os.path.join(root, n))]
        if found:
            return ImageFont.truetype(found[int(rng.integers(0, len(found)))], size)  # type: ignore[return-value]
    return _font(size, bold=True)


# ---------------------------------------------------------------- cartoons and line drawings

def _outline(rng: np.random.Generator) -> tuple[int, int, int]:
    return (0, 0, 0) if rng.random() < 0.8 else _color(rng, 0, 80)


def _stick_figure(d: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, s: float,
                  ink: tuple[int, int, int], width: int) -> None:
    """A stick figure standing with its feet at (x, y), ``s`` pixels tall."""
    head = s * 0.13
    neck, hip = y - s + 2 * head, y - s * 0.42
    d.ellipse((x - head, y - s, x + head, y - s + 2 * head), outline=ink, width=width,
              fill=_color(rng, 200, 256) if rng.random() < 0.5 else None)
    d.line((x, neck, x, hip), fill=ink, width=width)
    for side in (-1, 1):
        d.line((x, neck + s * 0.1, x + side * s * rng.uniform(0.15, 0.3), neck + s * rng.uniform(0.05, 0.35)),
               fill=ink, width=width)
        d.line((x, hip, x + side * s * rng.uniform(0.1, 0.22), y), fill=ink, width=width)
    eye = max(1.5, head * 0.15)
    for side in (-1, 1):
        d.ellipse((x + side * head * 0.4 - eye, y - s + head * 0.8 - eye, x + side * head * 0.4 + eye,
                   y - s + head * 0.8 + eye), fill=ink)
    d.arc((x - head * 0.5, y - s + head * 0.9, x + head * 0.5, y - s + head * 1.5), 20, 160, fill=ink, width=max(1, width // 2))


def _blob_character(d: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, s: float,
                    ink: tuple[int, int, int], width: int) -> None:
    """A round flat-coloured character (body, head, eyes, a mouth), centred at (x, y)."""
    body = _color(rng, 40, 256)
    d.ellipse((x - s * 0.45, y - s * 0.2, x + s * 0.45, y + s * 0.6), fill=body, outline=ink, width=width)
    d.ellipse((x - s * 0.35, y - s * 0.75, x + s * 0.35, y - s * 0.05), fill=_color(rng, 150, 256), outline=ink, width=width)
    if rng.random() < 0.5:  # ears
        for side in (-1, 1):
            d.polygon([(x + side * s * 0.3, y - s * 0.6), (x + side * s * 0.15, y - s * 0.95),
                       (x + side * s * 0.05, y - s * 0.7)], fill=body, outline=ink)
    for side in (-1, 1):
        cx, cy, r = x + side * s * 0.13, y - s * 0.45, s * 0.08
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 255, 255), outline=ink, width=max(1, width // 2))
        d.ellipse((cx - r * 0.45, cy - r * 0.3, cx + r * 0.45, cy + r * 0.6), fill=ink)
    d.arc((x - s * 0.15, y - s * 0.35, x + s * 0.15, y - s * 0.15), 10, 170, fill=ink, width=width)


def _speech_bubble(d: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[float, float, float, float],
                   tail: tuple[float, float], ink: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    cx = (x0 + x1) / 2
    d.polygon([(cx - 10, y1 - 4), (cx + 10, y1 - 4), tail], fill=(255, 255, 255), outline=ink)
    d.rounded_rectangle(box, radius=int(min(x1 - x0, y1 - y0) / 3), fill=(255, 255, 255), outline=ink, width=2)
    font = _font(int(rng.integers(12, 20)), bold=rng.random() < 0.5)
    lines = _wrap(d, _words(rng, int(rng.integers(2, 9))).upper(), font, int(x1 - x0 - 16))
    for k, line in enumerate(lines[:3]):
        d.text((cx, y0 + 10 + k * (font.size + 3)), line, font=font, fill=ink, anchor="ma")  # type: ignore[attr-defined]


def _scene(img: Image.Image, rng: np.random.Generator, line_art: bool) -> None:
    """Draw a cartoon scene over the whole of ``img``: sky, ground, sun, clouds, houses, trees, characters."""
    w, h = img.size
    d = ImageDraw.Draw(img)
    ink = _outline(rng)
    width = int(rng.integers(2, 6))
    white = (255, 255, 255)

    def fill(lo: int = 60, hi: int = 256) -> tuple[int, int, int] | None:
        return None if line_art else _color(rng, lo, hi)

    ground = h * rng.uniform(0.6, 0.85)
    if not line_art:
        d.rectangle((0, 0, w, ground), fill=_color(rng, 120, 256))
        d.rectangle((0, ground, w, h), fill=_color(rng, 40, 200))
    d.line((0, ground, w, ground), fill=ink, width=width)
    if rng.random() < 0.6:  # sun with rays
        r = min(w, h) * rng.uniform(0.05, 0.1)
        cx, cy = w * rng.uniform(0.1, 0.9), h * rng.uniform(0.08, 0.25)
        for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
            d.line((cx + np.cos(a) * r * 1.3, cy + np.sin(a) * r * 1.3, cx + np.cos(a) * r * 1.8,
                    cy + np.sin(a) * r * 1.8), fill=ink, width=width)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=None if line_art else (255, 220, 40), outline=ink, width=width)
    for _ in range(int(rng.integers(0, 4))):  # clouds
        cx, cy, r = w * rng.random(), h * rng.uniform(0.05, 0.35), min(w, h) * rng.uniform(0.03, 0.07)
        for dx in (-1.2, 0, 1.2):
            d.ellipse((cx + dx * r - r, cy - r, cx + dx * r + r, cy + r), fill=white, outline=ink, width=max(1, width - 1))
    for _ in range(int(rng.integers(0, 3))):  # houses
        x, s = w * rng.uniform(0.05, 0.85), min(w, h) * rng.uniform(0.15, 0.3)
        d.rectangle((x, ground - s, x + s, ground), fill=fill(), outline=ink, width=width)
        d.polygon([(x - s * 0.1, ground - s), (x + s / 2, ground - s * 1.6), (x + s * 1.1, ground - s)],
                  fill=fill(), outline=ink)
        d.rectangle((x + s * 0.4, ground - s * 0.45, x + s * 0.6, ground), fill=fill(), outline=ink, width=width)
    for _ in range(int(rng.integers(0, 4))):  # trees
        x, s = w * rng.random(), min(w, h) * rng.uniform(0.15, 0.35)
        d.rectangle((x - s * 0.06, ground - s * 0.5, x + s * 0.06, ground), fill=fill(60, 140), outline=ink, width=width)
        d.ellipse((x - s * 0.3, ground - s, x + s * 0.3, ground - s * 0.4), fill=None if line_art else _color(rng, 20, 160),
                  outline=ink, width=width)
    people = int(rng.integers(1, 4))
    for k in range(people):
        x = w * (k + 1) / (people + 1) + rng.normal(0, w * 0.03)
        s = h * rng.uniform(0.3, 0.55)
        if rng.random() < 0.5:
            _stick_figure(d, rng, x, ground + h * 0.05, s, ink, width)
        else:
            _blob_character(d, rng, x, ground - s * 0.3, s * 0.8, ink, width)
        if rng.random() < 0.6:
            bw, bh = w * rng.uniform(0.2, 0.35), h * rng.uniform(0.12, 0.2)
            bx = float(np.clip(x - bw / 2 + rng.normal(0, w * 0.05), 4, w - bw - 4))
            _speech_bubble(d, rng, (bx, 6, bx + bw, 6 + bh), (x, ground - s * 0.9), ink)


def _cartoon(rng: np.random.Generator) -> Image.Image:
    """A flat-coloured or line-drawn cartoon: one scene or a strip of panels, outlined shapes and speech bubbles."""
    line_art = rng.random() < 0.3
    panels = int(rng.choice([1, 1, 2, 3, 4]))
    pw, ph = int(rng.integers(300, 520)), int(rng.integers(280, 460))
    cols = panels if panels < 4 else 2
    rows = 1 if panels < 4 else 2
    gap = 12
    img = Image.new("RGB", (cols * pw + (cols + 1) * gap, rows * ph + (rows + 1) * gap),
                    (255, 255, 255) if rng.random() < 0.8 else _color(rng, 200, 256))
    for k in range(panels):
        r, c = divmod(k, cols)
        panel = Image.new("RGB", (pw, ph), (255, 255, 255) if line_art else _color(rng, 180, 256))
        _scene(panel, rng, line_art)
        pd = ImageDraw.Draw(panel)
        pd.rectangle((0, 0, pw - 1, ph - 1), outline=(0, 0, 0), width=3)
        img.paste(panel, (gap + c * (pw + gap), gap + r * (ph + gap)))
    return img


# ---------------------------------------------------------------- fractals

def _palette(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    phase = rng.random(3) * 2 * np.pi
    freq = rng.uniform(2, 12, 3)

    def colour(t: np.ndarray) -> np.ndarray:
        return 127.5 + 127.5 * np.cos(freq * t[..., None] + phase)

    return colour


def _fractal(rng: np.random.Generator) -> Image.Image:
    """A Mandelbrot or Julia set render (smooth escape-time colouring), zoomed at a random place."""
    w, h = int(rng.integers(320, 640)), int(rng.integers(240, 480))
    julia = rng.random() < 0.5
    if julia:
        a = rng.uniform(0, 2 * np.pi)
        c = 0.7885 * np.exp(1j * a) * rng.uniform(0.95, 1.02)
        centre, span = complex(rng.normal(0, 0.2), rng.normal(0, 0.2)), rng.uniform(1.2, 3.2)
    else:
        spots = (-0.745 + 0.113j, -0.1011 + 0.9563j, -1.25066 + 0.02012j, 0.2549 + 0.0005j, -0.75 + 0j, -0.16 + 1.0405j)
        centre = spots[int(rng.integers(0, len(spots)))]
        span = 3.0 if centre == -0.75 else 10 ** rng.uniform(-3, -0.7)
    ys, xs = np.mgrid[0:h, 0:w]
    z = centre + ((xs - w / 2) + 1j * (ys - h / 2)) * (span / w)
    c_arr = np.full_like(z, c) if julia else z.copy()
    if not julia:
        z = np.zeros_like(z)
    iters = int(rng.integers(60, 160))
    escaped = np.full(z.shape, float(iters))
    alive = np.ones(z.shape, dtype=bool)
    for k in range(iters):
        z[alive] = z[alive] ** 2 + c_arr[alive]
        out = alive & (np.abs(z) > 4)
        escaped[out] = k + 1 - np.log2(np.log(np.abs(z[out])) + 1e-9)
        alive &= ~out
    t = escaped / iters
    rgb = _palette(rng)(t ** rng.uniform(0.3, 1.0))
    rgb[alive] = 0 if rng.random() < 0.7 else _color(rng)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- abstract art and wallpapers

def _abstract(rng: np.random.Generator) -> Image.Image:
    """Abstract art and desktop-wallpaper-like images (eleven styles)."""
    w, h = (int(rng.choice([640, 800, 960])), int(rng.choice([360, 450, 600]))) if rng.random() < 0.7 else \
        (int(rng.integers(300, 700)), int(rng.integers(300, 700)))
    style = int(rng.integers(0, 11))
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    return _ABSTRACT_STYLES[style](rng, w, h, yy, xx)


def _abstract_shapes(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Overlapping translucent shapes (Kandinsky-like)."""
    img = Image.new("RGBA", (w, h), (*_color(rng, 180, 256), 255))
    for _ in range(int(rng.integers(8, 30))):
        layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        ld = ImageDraw.Draw(layer)
        x, y, s = rng.random() * w, rng.random() * h, rng.uniform(0.03, 0.3) * max(w, h)
        col = (*_color(rng), int(rng.integers(90, 230)))
        shape = int(rng.integers(0, 4))
        if shape == 0:
            ld.ellipse((x - s, y - s, x + s, y + s), fill=col, outline=(0, 0, 0, 255) if rng.random() < 0.3 else None)
        elif shape == 1:
            ld.rectangle((x - s, y - s / 2, x + s, y + s / 2), fill=col)
        elif shape == 2:
            ld.polygon([(x + s * np.cos(a), y + s * np.sin(a)) for a in rng.random(3) * 2 * np.pi], fill=col)
        else:
            ld.line((x, y, rng.random() * w, rng.random() * h), fill=col, width=int(rng.integers(2, 14)))
        img = Image.alpha_composite(img, layer)
    return img.convert("RGB")


def _abstract_mondrian(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Mondrian grid."""
    img = Image.new("RGB", (w, h), (245, 242, 230))
    d = ImageDraw.Draw(img)
    cells = [(0, 0, w, h)]
    for _ in range(int(rng.integers(4, 10))):
        x0, y0, x1, y1 = cells.pop(int(rng.integers(0, len(cells))))
        if (x1 - x0) > (y1 - y0):
            cut = int(rng.uniform(x0 + (x1 - x0) * 0.25, x1 - (x1 - x0) * 0.25))
            cells += [(x0, y0, cut, y1), (cut, y0, x1, y1)]
        else:
            cut = int(rng.uniform(y0 + (y1 - y0) * 0.25, y1 - (y1 - y0) * 0.25))
            cells += [(x0, y0, x1, cut), (x0, cut, x1, y1)]
    for cell in cells:
        paint = [(220, 30, 30), (30, 60, 170), (250, 210, 20), (245, 242, 230), (245, 242, 230)][int(rng.integers(0, 5))]
        d.rectangle(cell, fill=paint, outline=(10, 10, 10), width=int(rng.integers(6, 14)))
    return img


def _abstract_low_poly(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Low-poly triangles over a gradient."""
    a, b = np.array(_color(rng)), np.array(_color(rng))
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    nx, ny = int(rng.integers(5, 14)), int(rng.integers(4, 10))
    pts = np.stack(np.meshgrid(np.linspace(0, w, nx), np.linspace(0, h, ny)), -1)
    pts[1:-1, 1:-1] += rng.normal(0, 0.25, pts[1:-1, 1:-1].shape) * [w / nx, h / ny]
    for i in range(ny - 1):
        for j in range(nx - 1):
            p00, p01, p10, p11 = pts[i, j], pts[i, j + 1], pts[i + 1, j], pts[i + 1, j + 1]
            for tri in ((p00, p01, p11), (p00, p10, p11)):
                t = float(np.clip(np.mean([q[0] / w * 0.6 + q[1] / h * 0.4 for q in tri]) + rng.normal(0, 0.06), 0, 1))
                shade = tuple(int(v) for v in a * (1 - t) + b * t)
                d.polygon([tuple(q) for q in tri], fill=shade)  # type: ignore[misc]
    return img


def _abstract_bokeh(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Bokeh: blurred light discs on a dark gradient."""
    base = np.array(_color(rng, 0, 60)) * (1 - yy[..., None]) + np.array(_color(rng, 0, 90)) * yy[..., None]
    img = Image.fromarray(base.astype(np.uint8))
    layer = Image.new("RGB", (w, h), (0, 0, 0))
    ld = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(15, 60))):
        x, y, r = rng.random() * w, rng.random() * h, rng.uniform(0.01, 0.08) * max(w, h)
        ld.ellipse((x - r, y - r, x + r, y + r), fill=_color(rng, 60, 256))
    layer = layer.filter(ImageFilter.GaussianBlur(float(rng.uniform(3, 12))))
    return Image.fromarray(np.clip(np.asarray(img, float) + np.asarray(layer, float) * 0.8, 0, 255).astype(np.uint8))


def _abstract_waves(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Flowing waves / ribbons."""
    arr = np.zeros((h, w, 3))
    bands = int(rng.integers(3, 9))
    cols = [np.array(_color(rng)) for _ in range(bands + 1)]
    level = yy * 0 + 0.0
    for k in range(bands):
        edge = (k + 1) / (bands + 1) + 0.08 * np.sin(xx * rng.uniform(3, 12) + rng.random() * 6) * rng.uniform(0.3, 1.5)
        level = level + (yy * max(w, h) / h > edge)
    for k in range(bands + 1):
        arr[level == k] = cols[k]
    return Image.fromarray(arr.astype(np.uint8)).filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 3))))


def _abstract_voronoi(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Voronoi cells."""
    n = int(rng.integers(8, 60))
    seeds = rng.random((n, 2)) * [w / max(w, h), h / max(w, h)]
    dist = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
    label = dist.argmin(-1)
    palette = rng.integers(0, 256, (n, 3))
    arr = palette[label].astype(np.uint8)
    img = Image.fromarray(arr)
    if rng.random() < 0.6:
        edges = Image.fromarray(((np.diff(label, axis=0, prepend=label[:1]) != 0) |
                                 (np.diff(label, axis=1, prepend=label[:, :1]) != 0)).astype(np.uint8) * 255)
        img.paste((20, 20, 20), mask=edges.filter(ImageFilter.MaxFilter(3)))
    return img


def _abstract_brush_strokes(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Brush strokes."""
    img = Image.new("RGB", (w, h), _color(rng, 150, 256))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(20, 80))):
        pts = np.cumsum(rng.normal(0, 0.05, (6, 2)), 0) + rng.random(2)
        d.line([(float(p[0] * w), float(p[1] * h)) for p in pts], fill=_color(rng), width=int(rng.integers(4, 30)),
               joint="curve")
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))


def _abstract_nebula(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Nebula / starfield."""
    k = int(rng.integers(3, 10))
    cloud = np.asarray(Image.fromarray((rng.random((k, k, 3)) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), float)
    arr = cloud * rng.uniform(0.2, 0.7) * (rng.random(3) + 0.2)
    stars = rng.random((h, w)) < rng.uniform(0.001, 0.006)
    arr[stars] = 255
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def _abstract_plasma(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Plasma: sums of sines."""
    f = rng.uniform(2, 20, 4)
    t = (np.sin(xx * f[0] + rng.random() * 6) + np.sin(yy * f[1]) + np.sin((xx + yy) * f[2])
         + np.sin(np.hypot(xx - rng.random(), yy - rng.random()) * f[3]))
    return Image.fromarray(np.clip(_palette(rng)((t + 4) / 8), 0, 255).astype(np.uint8))


def _abstract_mountains(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Layered mountain silhouettes under a gradient sky (a flat "landscape" wallpaper)."""
    top, bottom = np.array(_color(rng)), np.array(_color(rng))
    arr = top * (1 - yy[..., None] * max(w, h) / h) + bottom * (yy[..., None] * max(w, h) / h)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if rng.random() < 0.6:
        r, cx, cy = rng.uniform(0.04, 0.1) * w, rng.random() * w, rng.uniform(0.15, 0.45) * h
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_color(rng, 180, 256))
    layers = int(rng.integers(2, 6))
    dark = np.array(_color(rng, 0, 120))
    for k in range(layers):
        base = h * (0.45 + 0.5 * k / layers)
        xs = np.linspace(0, w, 40)
        ys = base - np.abs(np.cumsum(rng.normal(0, h * 0.03, 40))) * rng.uniform(0.5, 1.5)
        tone = tuple(int(v) for v in dark * (k + 1) / layers + top * (1 - (k + 1) / layers) * 0.5)
        d.polygon([(0, h), *zip(xs.tolist(), ys.tolist()), (w, h)], fill=tone)  # type: ignore[arg-type]
    return img


def _abstract_spiral(rng: np.random.Generator, w: int, h: int, yy: np.ndarray, xx: np.ndarray) -> Image.Image:
    """Concentric or spiral patterns."""
    cx, cy = rng.random() * w / max(w, h), rng.random() * h / max(w, h)
    r, a = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    t = np.sin(r * rng.uniform(20, 80) + a * int(rng.integers(0, 8)))
    return Image.fromarray(np.clip(_palette(rng)((t + 1) / 2 * rng.uniform(0.5, 2)), 0, 255).astype(np.uint8))


#: The styles of :func:`_abstract`, by the number it draws; each is given the size and the pixel grid (y, x over the longer side).
_ABSTRACT_STYLES: tuple[Callable[[np.random.Generator, int, int, np.ndarray, np.ndarray], Image.Image], ...] = (
    _abstract_shapes,
    _abstract_mondrian,
    _abstract_low_poly,
    _abstract_bokeh,
    _abstract_waves,
    _abstract_voronoi,
    _abstract_brush_strokes,
    _abstract_nebula,
    _abstract_plasma,
    _abstract_mountains,
    _abstract_spiral,
)


# ---------------------------------------------------------------- captioned pictures (memes, second kind)

def _caption_base(rng: np.random.Generator, photos: Sequence[Path]) -> Image.Image:
    """A picture to caption: a supplied photo, a scikit-image non-product picture, a cartoon, abstract art or a fractal."""
    pick = rng.random()
    if photos and pick < 0.4:
        with Image.open(photos[int(rng.integers(0, len(photos)))]) as im:
            return _jitter(im.convert("RGB"), rng)
    if pick < 0.65:
        names = _negative_photo_names()
        return _jitter(skimage_photo(names[int(rng.integers(0, len(names)))]), rng)
    if pick < 0.8:
        return _cartoon(rng)
    if pick < 0.9:
        return _abstract(rng)
    return _fractal(rng)


def _outlined_lines(d: ImageDraw.ImageDraw, lines: list[str], font: ImageFont.ImageFont, x: float, y: float,
                    step: int, rng: np.random.Generator) -> None:
    fill, stroke = ((255, 255, 255), (0, 0, 0)) if rng.random() < 0.85 else ((0, 0, 0), (255, 255, 255))
    for k, line in enumerate(lines):
        d.text((x, y + k * step), line, font=font, fill=fill, anchor="ma",
               stroke_width=max(2, step // 12), stroke_fill=stroke)


def _captioned(rng: np.random.Generator, photos: Sequence[Path] = ()) -> Image.Image:
    """A picture with a caption, in one of the common meme layouts.

    Top/bottom outlined caption in a heavy sans; a white band above (a post's text); a demotivational
    poster (black frame, title below); a dark strip across the picture; two stacked pictures each
    with its caption.
    """
    base = _caption_base(rng, photos)
    scale = float(rng.integers(360, 720)) / max(base.size)
    base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))))
    layout = int(rng.choice([0, 0, 0, 1, 1, 2, 3, 4]))
    caps = rng.random() < 0.8
    text = _words(rng, int(rng.integers(2, 9)))
    text = text.upper() if caps else text
    if layout == 0:  # classic: outlined caption at the top and/or bottom
        img = base.copy()
        d = ImageDraw.Draw(img)
        size = int(img.width * rng.uniform(0.07, 0.12))
        font = _heavy_font(rng, size)
        where = int(rng.integers(0, 3))  # top, bottom, both
        for top in (True, False):
            if (where == 0 and not top) or (where == 1 and top):
                continue
            words = _words(rng, int(rng.integers(2, 9)))
            lines = _wrap(d, words.upper() if caps else words, font, img.width - 20)[:3]
            y = 8 if top else img.height - len(lines) * (size + 4) - 12
            _outlined_lines(d, lines, font, img.width / 2, y, size + 4, rng)
        return img
    if layout == 1:  # a white (or dark) band above with the post's text
        font = _heavy_font(rng, int(rng.integers(22, 40)), sans=rng.random() < 0.7) if rng.random() < 0.5 else \
            _font(int(rng.integers(22, 36)))
        probe = ImageDraw.Draw(base)
        lines = _wrap(probe, _words(rng, int(rng.integers(5, 25))), font, base.width - 40)[:5]
        step = int(font.size * 1.3)  # type: ignore[attr-defined]
        band = 24 + step * len(lines)
        dark = rng.random() < 0.2
        img = Image.new("RGB", (base.width, base.height + band), (20, 20, 24) if dark else (255, 255, 255))
        img.paste(base, (0, band))
        d = ImageDraw.Draw(img)
        for k, line in enumerate(lines):
            d.text((20, 12 + step * k), line, font=font, fill=(240, 240, 240) if dark else (0, 0, 0))
        return img
    if layout == 2:  # demotivational poster
        pad = int(base.width * 0.1)
        title = _heavy_font(rng, int(base.width * 0.09), sans=False)
        img = Image.new("RGB", (base.width + 2 * pad, base.height + pad + int(base.width * 0.3)), (0, 0, 0))
        img.paste(base, (pad, pad))
        d = ImageDraw.Draw(img)
        d.rectangle((pad - 4, pad - 4, pad + base.width + 3, pad + base.height + 3), outline=(255, 255, 255), width=2)
        y = pad + base.height + int(base.width * 0.04)
        d.text((img.width / 2, y), _words(rng, int(rng.integers(1, 3))).upper(), font=title, fill=(255, 255, 255), anchor="ma")
        d.text((img.width / 2, y + int(base.width * 0.13)), _words(rng, int(rng.integers(5, 12))),
               font=_font(max(12, int(base.width * 0.035))), fill=(230, 230, 230), anchor="ma")
        return img
    if layout == 3:  # a dark strip across the picture with the caption
        img = base.copy()
        d = ImageDraw.Draw(img, "RGBA")
        size = int(img.width * rng.uniform(0.05, 0.08))
        font = _heavy_font(rng, size)
        lines = _wrap(d, text, font, img.width - 30)[:2]
        y0 = int(img.height * rng.uniform(0.55, 0.8))
        d.rectangle((0, y0, img.width, y0 + len(lines) * (size + 6) + 16), fill=(0, 0, 0, int(rng.integers(140, 230))))
        for k, line in enumerate(lines):
            d.text((img.width / 2, y0 + 8 + k * (size + 6)), line, font=font, fill=(255, 255, 255), anchor="ma")
        return img
    # two stacked pictures, each with a caption beside it
    other = _caption_base(rng, photos).resize(base.size)
    img = Image.new("RGB", (base.width * 2, base.height * 2), (255, 255, 255))
    img.paste(base, (base.width, 0))
    img.paste(other, (base.width, base.height))
    d = ImageDraw.Draw(img)
    font = _heavy_font(rng, int(base.width * 0.09))
    for k in range(2):
        lines = _wrap(d, _words(rng, int(rng.integers(2, 7))), font, base.width - 30)[:4]
        for j, line in enumerate(lines):
            d.text((base.width / 2, base.height * k + base.height / 3 + j * (font.size + 6)), line,  # type: ignore[attr-defined]
                   font=font, fill=(0, 0, 0), anchor="ma")
    return img


# ---------------------------------------------------------------- screenshots (Chromium)

_CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio", "--force-device-scale-factor=1",
)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or ``None``."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _page_html(rng: np.random.Generator) -> tuple[str, tuple[int, int]]:
    e = html.escape
    accent = "#{:02x}{:02x}{:02x}".format(*_color(rng, 20, 200))
    dark = rng.random() < 0.25
    bg, fg, card = ("#1e1f24", "#e6e6e6", "#2a2c33") if dark else ("#ffffff", "#222222", "#f4f5f7")
    size = (1280, 800) if rng.random() < 0.7 else (412, 860)
    style = int(rng.integers(0, 7))
    nav = "".join(f"<a>{e(_words(rng, 1))}</a>" for _ in range(int(rng.integers(3, 7))))
    head = (f"<style>body{{margin:0;font-family:{rng.choice(['DejaVu Sans', 'Liberation Sans', 'DejaVu Serif'])};"
            f"background:{bg};color:{fg}}}nav{{background:{accent};padding:14px 24px}}nav a{{color:#fff;"
            f"margin-right:22px;font-weight:bold}}main{{padding:24px 32px}}.card{{background:{card};"
            f"border-radius:8px;padding:14px;margin:10px 0}}table{{border-collapse:collapse;width:100%}}"
            f"td,th{{border-bottom:1px solid #8884;padding:8px;text-align:left}}input,button{{font-size:16px;"
            f"padding:10px;margin:6px 0;width:80%;max-width:420px;display:block}}button{{background:{accent};"
            f"color:#fff;border:0}}pre{{font-family:DejaVu Sans Mono;background:#111;color:#9fe870;padding:16px}}"
            f".bubble{{max-width:60%;padding:10px 14px;border-radius:14px;margin:8px}}.me{{background:{accent};"
            f"color:#fff;margin-left:auto}}.you{{background:{card}}}</style>")
    body = f"<nav>{nav}</nav><main>"
    if style == 0:  # article
        body += f"<h1>{e(_words(rng, int(rng.integers(4, 10))))}</h1>"
        for _ in range(int(rng.integers(4, 9))):
            if rng.random() < 0.3:
                body += f"<h2>{e(_words(rng, 4))}</h2>"
            body += f"<p>{e(_words(rng, int(rng.integers(40, 90))))}.</p>"
    elif style == 1:  # login / sign-up form
        body += f"<h1>{e(_words(rng, 2))}</h1>"
        for _ in range(int(rng.integers(2, 6))):
            body += f"<label>{e(_words(rng, 2))}</label><input placeholder='{e(_words(rng, 2, False))}'>"
        body += f"<button>{e(_words(rng, 1))}</button><p><small>{e(_words(rng, 25))}</small></p>"
    elif style == 2:  # dashboard: number cards and a table
        body += "<div style='display:flex;gap:12px;flex-wrap:wrap'>"
        for _ in range(4):
            body += (f"<div class='card' style='flex:1;min-width:150px'><div>{e(_words(rng, 2))}</div>"
                     f"<div style='font-size:34px;font-weight:bold'>{rng.integers(100, 99999):,}</div></div>")
        body += "</div><table><tr>" + "".join(f"<th>{e(_words(rng, 1))}</th>" for _ in range(5)) + "</tr>"
        for _ in range(int(rng.integers(6, 14))):
            body += "<tr>" + "".join(f"<td>{e(_words(rng, 1)) if c == 0 else rng.integers(0, 9999)}</td>"
                                     for c in range(5)) + "</tr>"
        body += "</table>"
    elif style == 3:  # chat
        body += "<div style='display:flex;flex-direction:column'>"
        for _ in range(int(rng.integers(6, 14))):
            who = "me" if rng.random() < 0.5 else "you"
            body += f"<div class='bubble {who}'>{e(_words(rng, int(rng.integers(2, 25))))}</div>"
        body += "</div>"
    elif style == 4:  # search results
        body += f"<input value='{e(_words(rng, 3, False))}'>"
        for _ in range(int(rng.integers(5, 9))):
            body += (f"<div style='margin:18px 0'><div style='color:#1a7f37;font-size:13px'>https://"
                     f"{e(_words(rng, 1, False))}.example.org/{e(_words(rng, 1, False))}</div><a style="
                     f"'color:#1a0dab;font-size:20px'>{e(_words(rng, 6))}</a><div>{e(_words(rng, 30))}</div></div>")
    elif style == 5:  # inbox
        body += "<table>"
        for _ in range(int(rng.integers(10, 20))):
            body += (f"<tr><td><b>{e(_words(rng, 2))}</b></td><td>{e(_words(rng, 8))}</td>"
                     f"<td>{rng.integers(1, 28)} {rng.choice(['Jan', 'Feb', 'Mar', 'Apr', 'May'])}</td></tr>")
        body += "</table>"
    else:  # code
        lines = []
        for _ in range(int(rng.integers(15, 35))):
            indent = "    " * int(rng.integers(0, 3))
            lines.append(f"{indent}{_words(rng, 1, False)} = {_words(rng, 1, False)}({_words(rng, 1, False)}, "
                         f"{rng.integers(0, 100)})")
        body += f"<h2>{e(_words(rng, 3))}</h2><pre>{e(chr(10).join(lines))}</pre>"
    return f"<!doctype html><html><head><meta charset='utf-8'>{head}</head><body>{body}</main></body></html>", size


def _screenshot(rng: np.random.Generator, chromium: str, workdir: Path) -> Image.Image:
    page, (w, h) = _page_html(rng)
    src = workdir / "page.html"
    shot = workdir / "shot.png"
    src.write_text(page, "utf-8")
    shot.unlink(missing_ok=True)
    cmd = [chromium, *_CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}", f"--window-size={w},{h}",
           f"--screenshot={shot}", src.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if not shot.exists():
        tail = proc.stderr.decode("utf-8", "replace")[-400:]
        raise RuntimeError(f"chromium made no screenshot (exit {proc.returncode}): {tail}")
    with Image.open(shot) as img:
        return img.convert("RGB")


# ---------------------------------------------------------------- the generator

def generate_negatives(
    out_dir: str | Path,
    n_per_kind: int = 20,
    seed: int = 0,
    *,
    kinds: Sequence[str] = KINDS,
    photos: Sequence[str | Path] = (),
) -> list[Path]:
    """Write ``n_per_kind`` non-product images of each kind to ``out_dir``.

    Returns the paths written, kind by kind, and writes ``negatives.csv``
    beside them. The ``screenshot`` kind is skipped (with a warning) when no
    Chromium is installed, the ``photo``, ``meme`` and ``captioned`` kinds
    when scikit-image is missing. ``photos``: extra pictures the ``captioned``
    kind may caption (a caption makes any photo a meme: a non-product).
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown negative kinds {unknown}; known: {', '.join(KINDS)}")
    if n_per_kind < 0:
        raise ValueError("n_per_kind must be >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    paths: list[Path] = []
    for kind in kinds:
        made = _generate_kind(kind, out, n_per_kind, seed, [Path(p) for p in photos])
        for path, source in made:
            rows.append((path.name, kind, source))
            paths.append(path)
    with open(out / "negatives.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "intent", "kind", "source"])
        for name, kind, source in rows:
            writer.writerow([name, "non_product", kind, source])
    logger.info("wrote %d negatives to %s", len(paths), out)
    return paths


def _generate_kind(kind: str, out: Path, n: int, seed: int, photos: Sequence[Path] = ()) -> list[tuple[Path, str]]:
    made: list[tuple[Path, str]] = []
    if n == 0:
        return made
    if kind in ("photo", "meme", "captioned"):
        try:
            _skimage_data()
        except MissingDependencyError as err:
            logger.warning("skipping the %s negatives: %s", kind, err)
            return made
    makers: dict[str, Callable[[np.random.Generator, int], Image.Image]] = {
        "document": lambda r, i: _document(r),
        "chart": lambda r, i: _chart(r),
        "noise": lambda r, i: _noise(r),
        "meme": lambda r, i: _meme(r),
        "photo": _photo,
        "cartoon": lambda r, i: _cartoon(r),
        "fractal": lambda r, i: _fractal(r),
        "abstract": lambda r, i: _abstract(r),
        "captioned": lambda r, i: _captioned(r, photos),
    }
    if kind == "screenshot":
        chromium = find_chromium()
        if chromium is None:
            logger.warning("skipping the screenshot negatives: no chromium found (apt-get install chromium)")
            return made
        with tempfile.TemporaryDirectory(prefix="shoplens-shot-") as tmp:
            for i in range(n):
                img = _screenshot(_rng(seed, kind, i), chromium, Path(tmp))
                made.append((_save(img, out, kind, i), "chromium"))
        return made
    names = _negative_photo_names()
    for i in range(n):
        img = makers[kind](_rng(seed, kind, i), i)
        source = f"skimage:{names[i % len(names)]}" if kind == "photo" else "generated"
        made.append((_save(img, out, kind, i), source))
    return made


def _save(img: Image.Image, out: Path, kind: str, index: int) -> Path:
    # Photos as JPEG like real uploads; drawings as PNG (sharp edges, no artefacts).
    if kind in ("photo", "meme", "captioned", "fractal", "abstract"):
        path = out / f"{kind}_{index:04d}.jpg"
        img.save(path, quality=90)
    else:
        path = out / f"{kind}_{index:04d}.png"
        img.save(path, optimize=False)
    return path


__all__ = ["DRAWN_KINDS", "KINDS", "SKIMAGE_PHOTOS", "find_chromium", "generate_negatives", "skimage_photo"]
