"""Intent gate benchmark: the default classifier and a trained head, on real and generated photos.

    PYTHONPATH=src python benchmarks/intent.py [--out docs/benchmarks/intent.md]

Products: grocery store photos and catalogue images (other_product), clothing
photos and street outfits (apparel), from SHOPLENS_DATA (default ../shared/data).
Non-products: the shared wallpapers and generated negatives (seed 0 for
training and for choosing the default's parameters, seed 1 for testing).
Backbone outputs are cached under SHOPLENS_INTENT_CACHE (default:
``_intent_data.cache_dir()``), so a rerun only computes what is new.

The trained head is evaluated on photos it was not trained on: the grocery
``val`` split, the catalogue images, clothing photos of held-out senders, every
fifth outfit, the wallpapers, and seed-1 negatives. The leave-one-source-out
view trains without one kind of photo and tests on it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _intent_data import (
    Sample,
    data_dir,
    encoded,
    negative_samples,
    shared_samples,
    skimage_other_samples,
)

from shoplens.config import INTENTS
from shoplens.imaging import load_image
from shoplens.intent.imagenet_map import ImageNetIntent
from shoplens.intent.trained import TrainedIntent, fit_intent_head
from shoplens.models import create_model

BACKBONE = "efficientnet_lite0"
NEG_KINDS = ("document", "chart", "screenshot", "noise", "meme", "photo")


def kind_of(s: Sample) -> str:
    """A finer source name: grocery photos by top level (Fruit / Vegetables / Packages)."""
    if s.source == "grocery":
        return "grocery:" + s.group.split("/")[1]
    return s.source


def is_test(s: Sample) -> bool:
    """The photos a trained head never sees (see the module docstring)."""
    if s.source == "grocery":
        return s.group.startswith("val/")
    if s.source == "clothing":
        return zlib.crc32(s.group.encode()) % 5 == 0  # held-out senders
    if s.source == "outfits":
        return int(s.group) % 5 == 0
    return s.source in ("grocery-catalog", "wallpaper")


def rates(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    prod = y != 2
    out = {
        "n": len(y),
        "kept": float((pred[prod] != 2).mean()) if prod.any() else float("nan"),
        "stopped": float((pred[~prod] == 2).mean()) if (~prod).any() else float("nan"),
        "accuracy": float((pred == y).mean()),
    }
    both = prod & (pred != 2)
    out["apparel_vs_other"] = float((pred[both] == y[both]).mean()) if both.any() else float("nan")
    return out


def confusion(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    c = np.zeros((3, 3), dtype=np.int64)
    np.add.at(c, (y, pred), 1)
    return c


def md_confusion(c: np.ndarray) -> str:
    lines = ["| true \\ predicted | " + " | ".join(INTENTS) + " |", "|---|" + "---|" * 3]
    for k, row in enumerate(c):
        lines.append(f"| {INTENTS[k]} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def pct(v: float) -> str:
    return "–" if np.isnan(v) else f"{100 * v:.1f} %"


def per_source(pred: np.ndarray, y: np.ndarray, kinds: np.ndarray) -> list[tuple[str, int, float, float]]:
    """(kind, n, right gate decision, exact intent) per kind."""
    rows = []
    for k in dict.fromkeys(kinds):
        m = kinds == k
        gate = (pred[m] == 2) == (y[m] == 2)
        rows.append((k, int(m.sum()), float(gate.mean()), float((pred[m] == y[m]).mean())))
    return rows


def md_sources(rows: list[tuple[str, int, float, float]]) -> str:
    lines = ["| source | photos | gate right (kept / stopped) | exact intent |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {n} | {pct(g)} | {pct(e)} |" for k, n, g, e in rows]
    return "\n".join(lines)


def _best(fn, repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls, in milliseconds (the least disturbed by other jobs)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def timing(samples: list[Sample], head: TrainedIntent, n: int) -> dict[str, float]:
    """Milliseconds per photo: decode, backbone pass, and each classifier, at batch 32 and batch 1."""
    backbone = create_model(BACKBONE)
    default = ImageNetIntent(BACKBONE)
    paths = [s.path for s in samples[:n]]
    size = backbone.preprocess.input_size
    photos = [load_image(p, target_size=size) for p in paths]
    out = {"decode": _best(lambda: [load_image(p, target_size=size) for p in paths], 3) / len(paths)}
    for batch in (32, 1):
        k = len(photos) if batch > 1 else min(len(photos), 16)
        chunks = [photos[i : i + batch] for i in range(0, k, batch)]
        out[f"b{batch}_forward"] = _best(lambda chunks=chunks: [backbone.encode(c) for c in chunks], 3) / k
        encs = backbone.encode(photos[:batch])
        out[f"b{batch}_default"] = _best(lambda encs=encs: default.predict(encs), 20) / len(encs)
        out[f"b{batch}_trained"] = _best(lambda encs=encs: head.predict(encs), 20) / len(encs)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--n-train-negatives", type=int, default=80, help="seed-0 negatives per kind")
    ap.add_argument("--n-test-negatives", type=int, default=40, help="seed-1 negatives per kind")
    ap.add_argument("--timing-photos", type=int, default=64)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # steadier than 2 threads on a shared, busy machine

    root = data_dir()
    if not (root / "grocery").is_dir():
        print(f"no photos in {root}: set SHOPLENS_DATA", file=sys.stderr)
        return 2
    shared = shared_samples(root)
    neg_train = negative_samples(args.n_train_negatives, 0)
    neg_test = negative_samples(args.n_test_negatives, 1)
    others = skimage_other_samples()
    samples = shared + neg_train + neg_test + others
    enc = encoded(samples, BACKBONE)
    if not enc["ok"].all():
        logging.getLogger("intent-benchmark").warning("%d photos could not be read and are left out", int((~enc["ok"]).sum()))
    n_shared, n_tr = len(shared), len(neg_train)
    part = np.array(["shared"] * n_shared + ["neg0"] * n_tr + ["neg1"] * len(neg_test) + ["other"] * len(others))
    kinds = np.array([kind_of(s) for s in samples])
    y = np.array([INTENTS.index(s.intent) if s.intent in INTENTS else -1 for s in samples])
    ok = enc["ok"]
    lg, pl = enc["logits"], enc["pooled"]

    # ---- the default classifier
    default = ImageNetIntent(BACKBONE)
    dpred = default.predict_logits(lg).argmax(1)
    sets = {
        "products (all shared product photos)": (part == "shared") & (y != 2),
        "non-products: wallpapers + seed-1 negatives (fresh)": ((part == "shared") & (y == 2)) | (part == "neg1"),
        "non-products: seed-0 negatives (used to choose the rule)": part == "neg0",
    }
    main_eval = ok & ((part == "shared") | (part == "neg1"))
    d_rates = rates(dpred[main_eval], y[main_eval])
    d_conf = confusion(dpred[main_eval], y[main_eval])

    # ---- the trained head: train on the train part, test on unseen photos
    unseen = np.array([is_test(s) for s in samples])
    test_mask = ((unseen & (part == "shared")) | (part == "neg1")) & ok
    train_mask = (((part == "shared") & ~unseen) | (part == "neg0")) & ok
    t0 = time.perf_counter()
    state = fit_intent_head(pl[train_mask], lg[train_mask], y[train_mask], backbone=BACKBONE)
    fit_s = time.perf_counter() - t0
    head = TrainedIntent.from_state(state)
    tpred = head.predict_features(pl, lg).argmax(1)
    t_rates = rates(tpred[test_mask], y[test_mask])
    t_conf = confusion(tpred[test_mask], y[test_mask])
    d_on_test = rates(dpred[test_mask], y[test_mask])

    # ---- leave one source out: train without a kind, test on that kind's unseen photos
    loso = []
    held_kinds = ["grocery:Fruit", "grocery:Vegetables", "grocery:Packages", "grocery-catalog", "outfits", "wallpaper",
                  *NEG_KINDS]
    for k in held_kinds:
        tr = train_mask & (kinds != k)
        te = test_mask & (kinds == k)
        st = fit_intent_head(pl[tr], lg[tr], y[tr], backbone=BACKBONE)
        p = TrainedIntent.from_state(st).predict_features(pl[te], lg[te]).argmax(1)
        gate = (p == 2) == (y[te] == 2)
        loso.append((k, int(te.sum()), float(gate.mean()), float(((tpred[te] == 2) == (y[te] == 2)).mean()),
                     float(((dpred[te] == 2) == (y[te] == 2)).mean())))

    # ---- pictures that are a product or ambiguous (not in any figure above)
    other_rows = []
    oi = np.flatnonzero(part == "other")
    dprob = default.predict_logits(lg[oi])
    tprob = head.predict_features(pl[oi], lg[oi])
    for j, i in enumerate(oi):
        other_rows.append((samples[i].source, samples[i].intent, INTENTS[int(dprob[j].argmax())],
                           INTENTS[int(tprob[j].argmax())]))

    # ---- timing
    timing_samples = [s for s in shared if s.source == "grocery" and s.group.startswith("val/")]
    tm = timing(timing_samples, head, args.timing_photos)

    report = render(args, d_rates, d_conf, dpred, y, kinds, part, ok, sets, t_rates, t_conf, d_on_test,
                    int(train_mask.sum()), int(test_mask.sum()), fit_s, tpred, test_mask, loso, other_rows, tm)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, "utf-8")
    return 0


def render(args, d_rates, d_conf, dpred, y, kinds, part, ok, sets, t_rates, t_conf, d_on_test, n_train, n_test,
           fit_s, tpred, test_mask, loso, other_rows, tm) -> str:  # type: ignore[no-untyped-def]
    d = ImageNetIntent(BACKBONE)
    lines = [
        "# Intent gate: measured",
        "",
        "Machine: 2 CPU cores shared with several other jobs (load average about 14 while this ran), one torch",
        "thread: the timings are slow and noisy, compare the ratios.",
        f"Backbone {BACKBONE} (224 px, letterbox). Reproduce (features are cached, first run ~20 min on a busy machine):",
        "",
        "```",
        "PYTHONPATH=src python benchmarks/intent.py --out docs/benchmarks/intent.md",
        "```",
        "",
        "It needs the dev extra (scikit-image) and, for the screenshot negatives, Debian's `chromium`.",
        "",
        "Photos: grocery store photos (2,936) and catalogue images (81) as other_product; clothing (3,314) and",
        "street outfits (600) as apparel; 24 wallpapers and generated negatives (`shoplens.eval.negatives`:",
        "documents, charts, Chromium page screenshots, noise/gradients, memes, scikit-image pictures) as",
        f"non_product: seed 0 ({args.n_train_negatives} per kind) and seed 1 ({args.n_test_negatives} per kind).",
        "",
        "## Default classifier (`imagenet-map`, no training)",
        "",
        f"Rule parameters: {d.params()}. They were chosen by looking at all shared photos and the seed-0",
        "negatives; the seed-1 negatives were made afterwards and never looked at while choosing.",
        "",
        f"On all shared photos + seed-1 negatives ({d_rates['n']} photos):",
        f"**products kept {pct(d_rates['kept'])}** (target ≥ 95 %), **non-products stopped {pct(d_rates['stopped'])}**",
        f"(target ≥ 90 %), apparel vs other_product right on {pct(d_rates['apparel_vs_other'])} of the kept products,",
        f"exact intent {pct(d_rates['accuracy'])}.",
        "",
        md_confusion(d_conf),
        "",
    ]
    for name, m in sets.items():
        r = rates(dpred[m & ok], y[m & ok])
        value = r["kept"] if "products (" in name else r["stopped"]
        lines.append(f"- {name}: {r['n']} photos, {'kept' if 'products (' in name else 'stopped'} {pct(value)}")
    lines += ["", "Per source (all photos of the source):", "",
              md_sources(per_source(dpred[ok & (part != "other")], y[ok & (part != "other")],
                                    np.char.add(kinds[ok & (part != "other")],
                                                np.where(part[ok & (part != "other")] == "neg1", " (seed 1)",
                                                         np.where(part[ok & (part != "other")] == "neg0",
                                                                  " (seed 0)", ""))))),
              "",
              "## Trained head (`train-intent`), on photos it was not trained on",
              "",
              f"Trained on {n_train} photos (grocery `train` split, clothing from 80 % of the senders, 4 of 5 outfits,",
              f"seed-0 negatives) in {fit_s:.1f} s (features cached); tested on {n_test} unseen photos (grocery `val`,",
              "catalogue images, clothing of held-out senders, every 5th outfit, the wallpapers, seed-1 negatives).",
              "",
              f"**products kept {pct(t_rates['kept'])}** (target ≥ 98 %), **non-products stopped {pct(t_rates['stopped'])}**",
              f"(target ≥ 95 %), apparel vs other_product {pct(t_rates['apparel_vs_other'])}, exact intent",
              f"{pct(t_rates['accuracy'])}. The default classifier on the same photos: kept {pct(d_on_test['kept'])},",
              f"stopped {pct(d_on_test['stopped'])}, exact {pct(d_on_test['accuracy'])}.",
              "",
              md_confusion(t_conf),
              "",
              "Per source (test photos only):",
              "",
              md_sources(per_source(tpred[test_mask], y[test_mask], kinds[test_mask])),
              "",
              "### Leave one source out",
              "",
              "Trained without any photo of one kind, tested on that kind's unseen photos: does the head generalise",
              "to a kind of photo it never saw? (The gate is right when a product is kept / a non-product stopped.)",
              "",
              "| held-out kind | test photos | gate right, trained without it | trained with it | default |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {n} | {pct(a)} | {pct(b)} | {pct(c)} |" for k, n, a, b, c in loso]
    lines += ["",
              "### Pictures that are products or ambiguous (in no figure above)",
              "",
              "| picture | label | default | trained |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in other_rows]
    b32 = tm["b32_forward"] + tm["decode"]
    lines += ["",
              "## Time per photo",
              "",
              f"{args.timing_photos} grocery photos (348 px JPEG; batch 1: the first 16), milliseconds per photo, the",
              f"best of 3 runs (backbone) or 20 calls (classifiers); decoding took {tm['decode']:.2f} ms per photo.",
              "",
              "| batch | backbone pass | default classifier | trained head |",
              "|---:|---:|---:|---:|",
              f"| 32 | {tm['b32_forward']:.2f} | {tm['b32_default']:.3f} | {tm['b32_trained']:.3f} |",
              f"| 1 | {tm['b1_forward']:.2f} | {tm['b1_default']:.3f} | {tm['b1_trained']:.3f} |",
              "",
              f"At batch 32, the classifier itself is {100 * tm['b32_default'] / (b32 + tm['b32_default']):.2f} % (default) and",
              f"{100 * tm['b32_trained'] / (b32 + tm['b32_trained']):.2f} % (trained) of classifying a decoded photo; the backbone",
              "pass is the cost (and the other-goods embedding shares it).",
              "",
              "## Reading these figures",
              "",
              "- The trained head's seed-1 negatives come from the same generators as its seed-0 training negatives:",
              "  new images, not new kinds. The leave-one-source-out table is the test of new kinds; the wallpapers",
              "  (real photos, never trained on) are the only real non-product photos we have.",
              "- The `photo` kind repeats scikit-image's 20 non-product pictures as random crops, so its figures",
              "  are about those 20 pictures.",
              "- No shared or generated photo is a selfie, a pet photo taken by a phone, a street scene, food on a",
              "  plate, furniture, electronics or toys: docs/intent.md says how the mapping treats them and where the",
              "  default is expected to fail (selfies). The trained head has seen none of them either (see the clock).",
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
