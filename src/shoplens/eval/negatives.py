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
               only those that show no product: see :data:`SKIMAGE_PHOTOS`.

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

KINDS = ("document", "chart", "screenshot", "noise", "meme", "photo")

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
) -> list[Path]:
    """Write ``n_per_kind`` non-product images of each kind to ``out_dir``.

    Returns the paths written, kind by kind, and writes ``negatives.csv``
    beside them. The ``screenshot`` kind is skipped (with a warning) when no
    Chromium is installed, the ``photo`` and ``meme`` kinds when scikit-image
    is missing.
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
        made = _generate_kind(kind, out, n_per_kind, seed)
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


def _generate_kind(kind: str, out: Path, n: int, seed: int) -> list[tuple[Path, str]]:
    made: list[tuple[Path, str]] = []
    if n == 0:
        return made
    if kind in ("photo", "meme"):
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
    if kind in ("photo", "meme"):
        path = out / f"{kind}_{index:04d}.jpg"
        img.save(path, quality=90)
    else:
        path = out / f"{kind}_{index:04d}.png"
        img.save(path, optimize=False)
    return path


__all__ = ["KINDS", "SKIMAGE_PHOTOS", "find_chromium", "generate_negatives", "skimage_photo"]
