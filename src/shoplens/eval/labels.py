"""Printed labels and photographs of them, generated: a label shop's catalogue and its shoppers' photos.

A label is a brand's design (background colour, band, emblem, brand word)
in one of its variants (variant name, accent colour, small print): brands
come in families of look-alikes, as beers, juices and yoghurts do, and the
variant is what tells them apart. A photo of a label wraps it round a
cylinder (a bottle or a can), tilts it, lights it unevenly, puts it in front
of a real photo, blurs it and saves it as a phone would (JPEG).

Deterministic: label ``i`` of ``seed`` is always the same image, and so is
its photo ``v``. benchmarks/labels.py measures the engine on them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_SIZE = (360, 480)  # width, height
STYLES = ("Lager", "Pale Ale", "IPA", "Stout", "Pilsner", "Wheat")
_SYLLABLES = ("ka", "lo", "mer", "bru", "stad", "vik", "an", "tor", "hel", "gar", "sen", "ol", "rin", "dal", "kro", "fen",
              "bel", "nor", "ast", "ul", "ber", "gen", "mal", "tis")


def _font(size: int, bold: bool = False, serif: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    family = ("DejaVuSerif" if serif else "DejaVuSans") + ("-Bold" if bold else "")
    for folder in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF"):
        path = os.path.join(folder, family + ".ttf")
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def _word(rng: np.random.Generator, parts: int) -> str:
    return "".join(str(rng.choice(_SYLLABLES)) for _ in range(parts)).capitalize()


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(lo, hi, 3))
    return r, g, b


def label(seed: int, index: int, variants: int = 3) -> tuple[Image.Image, str, str]:
    """Label ``index``: (image, title, style). Labels ``variants`` apart in a row share a brand."""
    brand_rng = np.random.default_rng([seed, index // variants, 0])
    rng = np.random.default_rng([seed, index, 1])
    w, h = LABEL_SIZE
    base, ink = _colour(brand_rng, 120, 256), _colour(brand_rng, 0, 90)
    img = Image.new("RGB", (w, h), base)
    d = ImageDraw.Draw(img)
    brand = _word(brand_rng, 2).upper()
    serif = bool(brand_rng.integers(2))
    d.rectangle((0, 0, w, 70), fill=ink)  # the brand's band
    d.text((w // 2, 35), brand, font=_font(40, bold=True, serif=serif), fill=base, anchor="mm")
    # The brand's emblem: a ring with shapes in it, the same for every variant.
    cx, cy, r = w // 2, 170, 70
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=ink, width=6)
    for _ in range(int(brand_rng.integers(3, 7))):
        x, y = (int(v) for v in brand_rng.integers(-40, 40, 2))
        s = int(brand_rng.integers(8, 26))
        shape = int(brand_rng.integers(3))
        box = (cx + x - s, cy + y - s, cx + x + s, cy + y + s)
        if shape == 0:
            d.ellipse(box, fill=ink)
        elif shape == 1:
            d.rectangle(box, fill=ink)
        else:
            d.polygon([(cx + x, cy + y - s), (cx + x - s, cy + y + s), (cx + x + s, cy + y + s)], fill=ink)
    d.text((cx, cy + r + 10), f"EST. {int(brand_rng.integers(1820, 2015))}", font=_font(16, serif=serif), fill=ink, anchor="mt")
    # The variant: its name, an accent panel, its own small print.
    accent = _colour(rng, 0, 256)
    variant = _word(rng, int(rng.integers(2, 4)))
    style = str(rng.choice(STYLES))
    d.rectangle((20, 290, w - 20, 360), fill=accent)
    d.text((w // 2, 325), variant, font=_font(34, bold=True, serif=not serif), fill=ink if sum(accent) > 380 else base, anchor="mm")
    d.text((w // 2, 375), style.upper(), font=_font(22, bold=True), fill=ink, anchor="mt")
    small = _font(12)
    for line in range(3):
        text = " ".join(_word(rng, int(rng.integers(1, 3))).lower() for _ in range(5))
        d.text((w // 2, 410 + 16 * line), text, font=small, fill=ink, anchor="mt")
    d.text((w - 24, h - 12), f"{float(rng.integers(40, 90)) / 10:.1f}%", font=_font(14, bold=True), fill=ink, anchor="rb")
    return img, f"{brand.title()} {variant} {style}", style


def _cylinder(label_rgb: np.ndarray, arc: float, shade: float) -> tuple[np.ndarray, np.ndarray]:
    """The label wrapped round a cylinder seen from the front (its visible ``arc`` radians), and its mask."""
    h, w = label_rgb.shape[:2]
    radius = w / arc
    out_w = int(round(2 * radius * np.sin(arc / 2)))
    xs = (np.arange(out_w) - out_w / 2) / radius  # sin(theta) across the visible width
    theta = np.arcsin(np.clip(xs, -1, 1))
    map_x = np.tile((theta * radius + w / 2).astype(np.float32), (h, 1))
    map_y = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, out_w))
    warped = cv2.remap(label_rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    light = (1.0 - shade) + shade * np.cos(theta)  # darker towards the edges
    warped = np.clip(warped.astype(np.float32) * light[None, :, None], 0, 255).astype(np.uint8)
    mask = ((map_x >= 0) & (map_x < w)).astype(np.uint8) * 255
    return warped, mask


def photo(label_img: Image.Image, seed: int, index: int, view: int, backgrounds: Sequence[np.ndarray],
          side: int = 480) -> Image.Image:
    """A phone photo of ``label_img`` on a bottle: curved, tilted, lit unevenly, on a real background, blurred, JPEG."""
    rng = np.random.default_rng([seed, index, 100 + view])
    lab = np.asarray(label_img.convert("RGB"))
    warped, mask = _cylinder(lab, float(rng.uniform(1.2, 2.2)), float(rng.uniform(0.2, 0.5)))
    h, w = warped.shape[:2]
    # A tilt and a slant: the label's corners moved by up to 12 % of its size.
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    jitter = rng.uniform(-0.12, 0.12, (4, 2)) * np.array([w, h], np.float32)
    dst = (src + jitter).astype(np.float32)
    dst -= dst.min(0)
    out_w, out_h = int(dst[:, 0].max()) + 1, int(dst[:, 1].max()) + 1
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(warped, m, (out_w, out_h))
    mask = cv2.warpPerspective(mask, m, (out_w, out_h))
    # In front of a real photo: the label fills 45-80 % of the frame's height.
    bg = backgrounds[int(rng.integers(len(backgrounds)))] if backgrounds else np.full((side, side, 3), 128, np.uint8)
    frame_h = int(out_h / rng.uniform(0.45, 0.8))
    frame_w = int(frame_h * rng.uniform(0.7, 1.0))
    frame = cv2.resize(bg, (frame_w, frame_h), interpolation=cv2.INTER_AREA)
    if out_w > frame_w:
        f = frame_w / out_w * 0.95
        warped = cv2.resize(warped, (int(out_w * f), int(out_h * f)))
        mask = cv2.resize(mask, (int(out_w * f), int(out_h * f)))
        out_h, out_w = warped.shape[:2]
    x0 = int(rng.integers(0, frame_w - out_w + 1))
    y0 = int(rng.integers(0, frame_h - out_h + 1))
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    region = frame[y0 : y0 + out_h, x0 : x0 + out_w].astype(np.float32)
    frame[y0 : y0 + out_h, x0 : x0 + out_w] = (alpha * warped + (1 - alpha) * region).astype(np.uint8)
    # Glare: a soft bright ellipse; then brightness, blur, size and JPEG as a phone would.
    yy, xx = np.mgrid[0:frame_h, 0:frame_w].astype(np.float32)
    gx, gy = rng.uniform(0.2, 0.8) * frame_w, rng.uniform(0.2, 0.8) * frame_h
    sx, sy = rng.uniform(0.03, 0.1) * frame_w, rng.uniform(0.1, 0.3) * frame_h
    glare = np.exp(-(((xx - gx) / sx) ** 2 + ((yy - gy) / sy) ** 2) / 2) * rng.uniform(60, 160)
    img = frame.astype(np.float32) * rng.uniform(0.75, 1.15) + glare[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    sigma = float(rng.uniform(0.0, 1.4))
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    f = side / max(img.shape[:2])
    img = cv2.resize(img, (max(1, int(img.shape[1] * f)), max(1, int(img.shape[0] * f))), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(rng.integers(60, 90)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
