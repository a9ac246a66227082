"""Train the shipped default intent gate (``default-head``) and measure it against ``imagenet-map``.

    PYTHONPATH=src python benchmarks/intent_gate.py [--write-head] [--guards 0.5,0.7,0.9] [--out docs/benchmarks/intent_gate.md]

Training: the shared grocery ``train`` photos, clothing of 80 % of the senders
and 4 of 5 outfits (products), generated negatives of seed 0 (80 per old kind,
150 per new kind; captioned pictures over the training outfits). Validation
(used for choosing): the grocery ``val`` photos, catalogue images, held-out
clothing senders, every 5th outfit, the 24 wallpapers, seed-1 negatives.
Final test (never used for choosing): seed-7 negatives of every kind,
captioned pictures over the held-out outfits, with the validation products.
A photo is stopped when its non_product score is at least ``intent.stop_score``
(0.9), as the pipeline does. ``--write-head`` writes
``src/shoplens/intent/data/gate_head.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _intent_data import KINDS, NEW_KINDS, Sample, data_dir, encoded_maps, negative_samples, shared_samples
from harness import add_json_argument, write_result

from shoplens.config import INTENTS
from shoplens.intent.gate_head import GUARD, fit_gate_head, head_from_state, save_gate_head
from shoplens.intent.imagenet_map import ImageNetIntent

STOP = 0.9
L2 = 0.1
HEAD = Path(__file__).resolve().parents[1] / "src" / "shoplens" / "intent" / "data" / "gate_head.npz"


def kind_of(s: Sample) -> str:
    return "grocery:" + s.group.split("/")[1] if s.source == "grocery" else s.source


def held_out(s: Sample) -> bool:
    if s.source == "grocery":
        return s.group.startswith("val/")
    if s.source == "clothing":
        return zlib.crc32(s.group.encode()) % 5 == 0
    if s.source == "outfits":
        return int(s.group) % 5 == 0
    return s.source in ("grocery-catalog", "wallpaper")


def weights(mask: np.ndarray, y: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """Each intent weighs the same, and inside an intent each source."""
    w = np.zeros(len(y))
    for k in range(len(INTENTS)):
        srcs = np.unique(kinds[mask & (y == k)])
        for s in srcs:
            m = mask & (y == k) & (kinds == s)
            w[m] = 1.0 / len(srcs) / m.sum()
    return w[mask]


def gate_right(prob: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (prob[:, 2] >= STOP) == (y == 2)


def summary(prob: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    stopped, prod = prob[:, 2] >= STOP, y != 2
    return float((~stopped & prod & mask).sum() / (prod & mask).sum()), float((stopped & ~prod & mask).sum() / (~prod & mask).sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-head", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--guard", type=float, default=GUARD, help="the product guard the head ships with (default %(default)s)")
    ap.add_argument("--guards", default="", help="also sweep these product guards (e.g. 0.5,0.7,0.9): per source, "
                    "validation and leave-one-source-out, the head unchanged (the guard applies at prediction)")
    add_json_argument(ap, "intent_gate")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    root = data_dir()
    if not (root / "grocery").is_dir():
        print(f"no photos in {root}: set SHOPLENS_DATA", file=sys.stderr)
        return 2
    with open(root / "outfits" / "garments.jsonl") as f:
        outfits = [json.loads(line)["image"] for line in f if line.strip()]
    out_train = [root / "outfits" / im for i, im in enumerate(outfits) if i % 5]
    out_test = [root / "outfits" / im for i, im in enumerate(outfits) if i % 5 == 0]
    shared = shared_samples(root)
    neg0 = negative_samples(80, 0) + negative_samples(150, 0, NEW_KINDS, out_train, "-outfits-train")
    neg1 = negative_samples(40, 1) + negative_samples(50, 1, NEW_KINDS, out_train, "-outfits-train")
    neg7 = negative_samples(30, 7, KINDS, out_test, "-outfits-test")
    samples = shared + neg0 + neg1 + neg7
    part = np.array(["shared"] * len(shared) + ["neg0"] * len(neg0) + ["neg1"] * len(neg1) + ["neg7"] * len(neg7))
    enc = encoded_maps(samples)
    lg, st, ok = enc["logits"], enc["stats"][:, :2], enc["ok"]
    kinds = np.array([kind_of(s) for s in samples])
    y = np.array([INTENTS.index(s.intent) for s in samples])
    unseen = np.array([held_out(s) for s in samples])
    train = (((part == "shared") & ~unseen) | (part == "neg0")) & ok
    val = (((part == "shared") & unseen) | (part == "neg1")) & ok
    final = (((part == "shared") & unseen & (y != 2)) | (part == "neg7")) & ok

    def fit(mask: np.ndarray) -> np.ndarray:
        state = fit_gate_head(lg[mask], st[mask], y[mask], weights(mask, y, kinds), l2=L2, guard=args.guard)
        return head_from_state(state).predict_features(lg, st)

    def fit_guarded(mask: np.ndarray) -> Any:
        """The head fitted on ``mask``, predicting with any guard: the guard is not part of the fit."""
        state = fit_gate_head(lg[mask], st[mask], y[mask], weights(mask, y, kinds), l2=L2)

        def predict(guard: float) -> np.ndarray:
            head = head_from_state(state)
            head.guard = guard
            return head.predict_features(lg, st)

        return predict

    t0 = time.perf_counter()
    state = fit_gate_head(lg[train], st[train], y[train], weights(train, y, kinds), l2=L2, guard=args.guard)
    fit_s = time.perf_counter() - t0
    head = head_from_state(state)
    hp, dp = head.predict_features(lg, st), ImageNetIntent().predict_logits(lg)
    lines = ["# Intent gate: the shipped head (`default-head`) against `imagenet-map`", "",
             "Reproduce (features cached under ~/.cache/shoplens/bench/intent; first run ~15 min on 2 cores):", "",
             "```", "PYTHONPATH=src python benchmarks/intent_gate.py --write-head --guards 0.5,0.6,0.7,0.8,0.9,1.01 "
             "--out docs/benchmarks/intent_gate.md",
             "```", "",
             f"A photo is stopped when its non_product score is ≥ {STOP} (`intent.stop_score`). Head fitted on",
             f"{int(train.sum())} photos in {fit_s:.0f} s (L2 {L2}, product guard {head.guard}).", ""]
    results: dict[str, object] = {"stop_score": STOP, "train_photos": int(train.sum()), "fit_s": round(fit_s, 1), "l2": L2}
    for name, mask in (("validation (used for choosing)", val), ("final test (seed 7, never used for choosing)", final)):
        hk, hs = summary(hp, y, mask)
        dk, ds = summary(dp, y, mask)
        sources = {}
        lines += [f"## {name}: {int(mask.sum())} photos", "",
                  f"default-head: **products kept {hk:.3f}, non-products stopped {hs:.3f}**; "
                  f"imagenet-map: kept {dk:.3f}, stopped {ds:.3f}.", "",
                  "| source | photos | default-head | imagenet-map |", "|---|---:|---:|---:|"]
        for k in dict.fromkeys(kinds[mask]):
            m = mask & (kinds == k)
            lines.append(f"| {k} | {int(m.sum())} | {gate_right(hp, y)[m].mean():.3f} | {gate_right(dp, y)[m].mean():.3f} |")
            sources[str(k)] = {"photos": int(m.sum()), "default-head": round(float(gate_right(hp, y)[m].mean()), 3),
                               "imagenet-map": round(float(gate_right(dp, y)[m].mean()), 3)}
        lines.append("")
        results["validation" if mask is val else "final"] = {
            "photos": int(mask.sum()), "default-head": {"kept": round(hk, 3), "stopped": round(hs, 3)},
            "imagenet-map": {"kept": round(dk, 3), "stopped": round(ds, 3)}, "sources": sources}
    leave_one_out = {}
    lines += ["## Leave one source out", "",
              "Trained without any photo of one source, tested on that source's validation photos.", "",
              "| held-out source | photos | trained without it | trained with it | imagenet-map |", "|---|---:|---:|---:|---:|"]
    for k in dict.fromkeys(kinds[val]):
        te = val & (kinds == k)
        p = fit(train & (kinds != k)) if (train & (kinds == k)).any() else hp
        lines.append(f"| {k} | {int(te.sum())} | {gate_right(p, y)[te].mean():.3f} | {gate_right(hp, y)[te].mean():.3f} | "
                     f"{gate_right(dp, y)[te].mean():.3f} |")
        leave_one_out[str(k)] = {"photos": int(te.sum()), "without": round(float(gate_right(p, y)[te].mean()), 3),
                                 "with": round(float(gate_right(hp, y)[te].mean()), 3),
                                 "imagenet-map": round(float(gate_right(dp, y)[te].mean()), 3)}
    results["leave_one_out"] = leave_one_out
    if args.guards:
        sweep = guard_sweep([float(g) for g in args.guards.split(",")], fit_guarded, train, val, final, kinds, y)
        lines += sweep_table(sweep)
        results["guards"] = sweep
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write_head:
        state["report"] = np.array(report)
        save_gate_head(state, str(HEAD))
        print(f"wrote {HEAD} ({HEAD.stat().st_size} bytes)")
    if args.out:
        args.out.write_text(report, "utf-8")
    write_result("intent_gate", results, args.json, argv)
    return 0


def guard_sweep(guards: list[float], fit_guarded: Any, train: np.ndarray, val: np.ndarray, final: np.ndarray,
                kinds: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Per product guard: kept/stopped and each source on validation and final test, and each product
    source left out of training (the head fitted without it): how the guard fares on product kinds the
    head never saw, which is what it is there for."""
    out: dict[str, Any] = {}
    predict = fit_guarded(train)
    products = [k for k in dict.fromkeys(kinds[val]) if (y[val & (kinds == k)] != INTENTS.index("non_product")).all()]
    left_out = {k: fit_guarded(train & (kinds != k)) for k in products if (train & (kinds == k)).any()}
    for g in guards:
        hp = predict(g)
        row: dict[str, Any] = {}
        for name, mask in (("validation", val), ("final", final)):
            kept, stopped = summary(hp, y, mask)
            row[name] = {"kept": round(kept, 3), "stopped": round(stopped, 3),
                         "sources": {str(k): round(float(gate_right(hp, y)[mask & (kinds == k)].mean()), 3)
                                     for k in dict.fromkeys(kinds[mask])}}
        row["leave_one_out"] = {str(k): round(float(gate_right(p(g), y)[val & (kinds == k)].mean()), 3)
                                for k, p in left_out.items()}
        out[f"{g:g}"] = row
    return out


def sweep_table(sweep: dict[str, Any]) -> list[str]:
    guards = list(sweep)
    sources = list(next(iter(sweep.values()))["validation"]["sources"])
    lines = ["## Product guard", "",
             "The head unchanged; the guard (the mapping's product score from which its verdict stands) at each",
             "value. Validation per source; for a product source also the figure with it left out of training.", "",
             "| source | " + " | ".join(f"guard {g}: val / left out" for g in guards) + " |",
             "|---|" + "---:|" * len(guards)]
    for k in sources:
        cells = [f"{sweep[g]['validation']['sources'][k]:.3f}" + (f" / {sweep[g]['leave_one_out'][k]:.3f}" if k in sweep[g]["leave_one_out"] else "")
                 for g in guards]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    for name in ("validation", "final"):
        cells = [f"kept {sweep[g][name]['kept']:.3f}, stopped {sweep[g][name]['stopped']:.3f}" for g in guards]
        lines.append(f"| **{name}** | " + " | ".join(cells) + " |")
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
