"""Global-embedding ablation: each component on and off, its gain and its cost, in one run.

    PYTHONPATH=src python benchmarks/ablation.py [--out docs/benchmarks/embedq.md]

Grocery (SHOPLENS_DATA/grocery): the ``val`` store photos are the queries.
  * a: against the 81 catalogue images, untrained head (identity or PCA-whitening fitted on the catalogue);
  * b: against the 81 catalogue images after ``train_embedder`` with the ``train`` store photos as labelled extras;
  * c: against the catalogue plus the ``train`` photos, after the same training (c0: untrained).
Clothing (SHOPLENS_DATA/clothing): queries from the odd senders, catalogue from the even ones
(labels Not sure / Skip / Other left out); precision@10 of the same category, the head trained
on the catalogue half's categories.

Rows add one component at a time: aspect-preserving preprocessing (letterbox on a 32-px grid
instead of squashing to a square), region pooling (R-MAC instead of GeM), multi-scale (224 +
320 px), whitening, the trained head. Descriptors come from the engine's own backbone and
pooling code, cached by benchmarks/_embed_features.py; time per query is measured here, on
the same photos, for every configuration side by side (a busy shared machine: compare ratios).
The returned-set table shows precision and recall of what the rank filter keeps at the default
min_rank (1.08), raw and calibrated per category (shoplens.embed.calibration).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _embed_features import cache_path, descriptors, items

from shoplens.embed import (
    Head,
    IdentityHead,
    calibrate_head,
    fit_whitening,
    get_pooling,
    l2_normalize,
    returned_set_quality,
    similar_sets,
    train_embedder,
)
from shoplens.imaging import load_image
from shoplens.models import create_model

log = logging.getLogger("ablation")
BACKBONE = "efficientnet_lite0"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    resize: str
    pooling: str
    sizes: tuple[int, ...]


VARIANTS = [
    Variant("naive: squash 224, GeM", "squash", "gem3-s32", (224,)),
    Variant("+ aspect-preserving (letterbox)", "letterbox", "gem3-s32", (224,)),
    Variant("+ region pooling (R-MAC)", "letterbox", "rmac-s32", (224,)),
    Variant("+ multi-scale (224+320)", "letterbox", "rmac-s32", (224, 320)),
]


def features(dataset: str, v: Variant) -> np.ndarray | None:
    parts = []
    for size in v.sizes:
        if not cache_path(dataset, BACKBONE, size, v.resize).exists() and not os.environ.get("ABLATION_EXTRACT"):
            return None
        parts.append(l2_normalize(descriptors(dataset, BACKBONE, size, v.resize)[v.pooling]))
    return np.concatenate(parts, axis=1)


def recall_at(q: np.ndarray, q_ids: np.ndarray, db: np.ndarray, db_ids: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Product-level Recall@K: a product counts once, at its nearest image."""
    sims = q @ db.T
    out = {k: 0.0 for k in ks}
    for i in range(len(q)):
        seen: list[str] = []
        for j in np.argsort(-sims[i]):
            if db_ids[j] not in seen:
                seen.append(db_ids[j])
                if len(seen) >= max(ks):
                    break
        for k in ks:
            out[k] += float(q_ids[i] in seen[:k])
    return {k: v / len(q) for k, v in out.items()}


def p_at_10(q: np.ndarray, q_lab: np.ndarray, db: np.ndarray, db_lab: np.ndarray) -> float:
    top = np.argsort(-(q @ db.T), axis=1)[:, :10]
    return float(np.mean(db_lab[top] == q_lab[:, None]))


def time_per_query(photos: list, variants: list[Variant], heads: dict[str, Head], reps: int = 2) -> dict[str, dict[str, float]]:
    """Median ms per photo, one photo at a time: backbone passes, pooling, head."""
    model = create_model(BACKBONE)
    base = model.preprocess  # type: ignore[attr-defined]
    out: dict[str, dict[str, float]] = {}
    for v in variants:
        model.preprocess = dataclasses.replace(base, resize=v.resize)  # type: ignore[attr-defined]
        pool = get_pooling(v.pooling)
        model.encode(photos[:1], input_size=v.sizes[0])  # warm up
        enc_ms, pool_ms = [], []
        for _ in range(reps):
            for p in photos:
                t0 = time.perf_counter()
                encs = [model.encode([p], input_size=s)[0] for s in v.sizes]
                t1 = time.perf_counter()
                raw = np.concatenate([l2_normalize(pool(e.features["s32"].float().numpy())[None]) for e in encs], axis=1)
                t2 = time.perf_counter()
                enc_ms.append((t1 - t0) * 1000)
                pool_ms.append((t2 - t1) * 1000)
        out[v.name] = {"backbone": float(np.median(enc_ms)), "pooling": float(np.median(pool_ms))}
    head_ms = {}
    for name, head in heads.items():
        raw = np.random.default_rng(0).normal(size=(1, head_dim_in(head))).astype(np.float32)
        t = []
        for _ in range(50):
            t0 = time.perf_counter()
            head.apply(raw)
            t.append((time.perf_counter() - t0) * 1000)
        head_ms[name] = float(np.median(t))
    out["heads"] = head_ms
    return out


def head_dim_in(head: Head) -> int:
    w = getattr(head, "weight", None)
    return int(w.shape[1]) if w is not None else 2560


def grocery(epochs: int, seed: int) -> tuple[list[dict], dict, dict[str, Head]]:
    its = items("grocery")
    ids, cats, split = its.label.astype(str), its.category.astype(str), its.split
    cat, tr, val = split == "catalog", split == "train", split == "val"
    cat_tr = cat | tr
    rows: list[dict] = []
    returned: dict = {}
    heads: dict[str, Head] = {}
    for v in VARIANTS:
        x = features("grocery", v)
        if x is None:
            rows.append({"variant": v.name, "missing": True})
            log.warning("no cached descriptors for %s: run benchmarks/_embed_features.py (or set ABLATION_EXTRACT=1)", v.name)
            continue
        ident = IdentityHead()
        row: dict = {"variant": v.name, "dim": x.shape[1]}
        e = ident.apply(x)
        row["a"] = recall_at(e[val], ids[val], e[cat], ids[cat])
        row["c0"] = recall_at(e[val], ids[val], e[cat_tr], ids[cat_tr])
        w_a = fit_whitening(x[cat], min(64, x.shape[1]), power=0.5)
        w_c = fit_whitening(x[cat_tr], min(256, x.shape[1]), power=0.5)
        ea, ec = w_a.apply(x), w_c.apply(x)
        row["a_white"] = recall_at(ea[val], ids[val], ea[cat], ids[cat])
        row["c0_white"] = recall_at(ec[val], ids[val], ec[cat_tr], ids[cat_tr])
        final = v is VARIANTS[-1]
        t0 = time.perf_counter()
        head, report = train_embedder(x[cat_tr], ids[cat_tr], domain="other_product", categories=cats[cat_tr],
                                      catalogue=cat[cat_tr], holdout=0.15 if final else 0.0, epochs=epochs, seed=seed)
        row["train_s"] = time.perf_counter() - t0
        et = head.apply(x)
        row["b"] = recall_at(et[val], ids[val], et[cat], ids[cat])
        row["c"] = recall_at(et[val], ids[val], et[cat_tr], ids[cat_tr])
        rows.append(row)
        log.info("%s", row)
        if final:
            heads = {"identity": ident, "whitening": w_c, "trained": head}
            cal_untrained = calibrate_head(ident, x[cat], ids[cat], cats[cat])
            returned["heldout"] = report.heldout
            returned["calibration_info"] = report.calibration.info if report.calibration else None
            for rel in ("category", "product"):
                for hname, h, cal in (("untrained", ident, cal_untrained), ("trained", head, report.calibration)):
                    vec = h.apply(x)
                    for against, db in (("catalogue", cat), ("catalogue+train", cat_tr)):
                        pairs = similar_sets(vec[val], ids[val], cats[val], vec[db], ids[db], cats[db], relevance=rel)
                        returned[(rel, hname, against, "raw")] = returned_set_quality(pairs)
                        if cal is not None:
                            returned[(rel, hname, against, "calibrated")] = returned_set_quality(pairs, cal)
    return rows, returned, heads


def clothing(epochs: int, seed: int) -> list[dict]:
    its = items("clothing")
    lab, split = its.label.astype(str), its.split
    db, q = split == "a", split == "b"
    rows = []
    for v in VARIANTS[1:]:
        x = features("clothing", v)
        if x is None:
            rows.append({"variant": v.name, "missing": True})
            continue
        e = l2_normalize(x)
        row: dict = {"variant": v.name, "p10": p_at_10(e[q], lab[q], e[db], lab[db])}
        w = fit_whitening(x[db], min(256, x.shape[1]))
        ew = w.apply(x)
        row["p10_white"] = p_at_10(ew[q], lab[q], ew[db], lab[db])
        names = np.array([f"img{i}" for i in range(len(x))])
        t0 = time.perf_counter()
        head, report = train_embedder(x[db], names[db], domain="apparel", categories=lab[db], holdout=0.15, epochs=epochs, seed=seed)
        row["train_s"] = time.perf_counter() - t0
        et = head.apply(x)
        row["p10_trained"] = p_at_10(et[q], lab[q], et[db], lab[db])
        for hname, h, cal in (("untrained", IdentityHead(), calibrate_head(IdentityHead(), x[db], names[db], lab[db])),
                              ("trained", head, report.calibration)):
            vec = h.apply(x)
            pairs = similar_sets(vec[q], names[q], lab[q], vec[db], names[db], lab[db], relevance="category", k=50)
            row[f"returned_{hname}_raw"] = returned_set_quality(pairs)
            if cal is not None:
                row[f"returned_{hname}_calibrated"] = returned_set_quality(pairs, cal)
        row["queries"], row["catalogue"] = int(q.sum()), int(db.sum())
        rows.append(row)
        log.info("%s", row)
    return rows


def _pr(r: dict, k: str) -> str:
    """A (precision, recall) pair of row ``r``, or a dash where it was not measured."""
    return "–" if k not in r else f"{r[k][0]:.3f} / {r[k][1]:.3f}"


def fmt_r(r: dict | None) -> str:
    return "–" if r is None else f"{r[1]:.3f} / {r[5]:.3f}"


def report_md(g_rows: list[dict], returned: dict, c_rows: list[dict], timing: dict, args: argparse.Namespace, wall_s: float) -> str:
    cmd = "PYTHONPATH=src python benchmarks/ablation.py" + (f" --epochs {args.epochs}" if args.epochs != 60 else "")
    out = [
        "# Global embedding: ablation (issue 7)",
        "",
        f"One run of `{cmd}` ({wall_s:.0f} s with cached descriptors), backbone {BACKBONE}, a shared 2-core machine "
        "under load (times are medians over the same photos, one photo at a time; compare ratios).",
        "",
        "## Grocery: val store photos as queries (R@1 / R@5, product level)",
        "",
        "| configuration | a: vs catalogue, untrained | a + whitening | b: vs catalogue, trained | c0: vs catalogue+train, untrained | c0 + whitening | c: vs catalogue+train, trained | ms/query (backbone + pooling) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in g_rows:
        if r.get("missing"):
            out.append(f"| {r['variant']} | not measured (descriptors not cached) | | | | | | |")
            continue
        t = timing.get(r["variant"])
        ms = "–" if t is None else f"{t['backbone']:.0f} + {t['pooling']:.1f}"
        out.append(f"| {r['variant']} | {fmt_r(r['a'])} | {fmt_r(r['a_white'])} | {fmt_r(r['b'])} | {fmt_r(r['c0'])} | "
                   f"{fmt_r(r['c0_white'])} | {fmt_r(r['c'])} | {ms} |")
    heads = timing.get("heads", {})
    out += ["", "Head cost per query (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in heads.items()) + ". Training time (s, "
            "check run + final run where a held-out check is made): " + ", ".join(f"{r['variant']} {r['train_s']:.0f}" for r in g_rows if "train_s" in r) + "."]
    if returned.get("heldout"):
        h = returned["heldout"]
        out += ["", f"`train_embedder`'s own held-out check on the last 15 % of each product's train photos: R@1 against the catalogue "
                f"{h['r1_untrained']:.3f} untrained -> {h['r1_trained']:.3f} trained ({h['queries']} photos). It is higher than on `val` "
                "because train photos of one product were taken together."]
    out += ["", "## Returned set at the default min_rank (1.08): precision / recall, grocery val queries (final configuration)", "",
            "Relevant = same category (what the calibration targets, precision 0.9) or same product. Raw: distances as they are; "
            "calibrated: per-category thresholds fitted by `train_embedder` (trained head, on held-out train photos) or, untrained, "
            "leave-one-out over the catalogue images alone.", "",
            "| relevant | head | against | raw | calibrated |", "|---|---|---|---|---|"]
    for key, val in returned.items():
        if not isinstance(key, tuple) or key[3] != "raw":
            continue
        rel, hname, against, _ = key
        cal = returned.get((rel, hname, against, "calibrated"))
        out.append(f"| {rel} | {hname} | {against} | {val[0]:.3f} / {val[1]:.3f} | " + ("–" if cal is None else f"{cal[0]:.3f} / {cal[1]:.3f}") + " |")
    out += ["", "## Clothing: precision@10 of the same category", "",
            "| configuration | untrained | + whitening | trained on the catalogue's categories | returned set untrained raw / calibrated (P / R) | trained raw / calibrated (P / R) |",
            "|---|---|---|---|---|---|"]
    for r in c_rows:
        if r.get("missing"):
            out.append(f"| {r['variant']} | not measured (descriptors not cached) | | | | |")
            continue
        out.append(f"| {r['variant']} | {r['p10']:.3f} | {r['p10_white']:.3f} | {r['p10_trained']:.3f} | "
                   f"{_pr(r, 'returned_untrained_raw')} → {_pr(r, 'returned_untrained_calibrated')} | "
                   f"{_pr(r, 'returned_trained_raw')} → {_pr(r, 'returned_trained_calibrated')} |")
    if c_rows and "queries" in c_rows[-1]:
        out += ["", f"{c_rows[-1]['queries']} queries, {c_rows[-1]['catalogue']} catalogue photos."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write the Markdown report here")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-photos", type=int, default=12)
    ap.add_argument("--no-clothing", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(int(os.environ.get("SHOPLENS_THREADS", "2")))
    t0 = time.perf_counter()
    g_rows, returned, heads = grocery(args.epochs, args.seed)
    c_rows = [] if args.no_clothing else clothing(args.epochs, args.seed)
    its = items("grocery")
    photos = [load_image(p) for p in np.array(its.paths)[its.split == "val"][:: max(1, int((its.split == "val").sum()) // args.timing_photos)][: args.timing_photos]]
    timing = time_per_query(photos, [v for v, r in zip(VARIANTS, g_rows) if not r.get("missing")], heads)
    md = report_md(g_rows, returned, c_rows, timing, args, time.perf_counter() - t0)
    if args.out:
        args.out.write_text(md, "utf-8")
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
