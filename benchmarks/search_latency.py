"""Search latency per intent, in one run: what the intent gate saves.

Builds a store from real photos (grocery catalogue as other_product, clothing
photos as apparel), optionally padded to N products with perturbed copies of
the real descriptors, then times searches of non-product, grocery and outfit
photos side by side (interleaved, after a warm-up).

    python benchmarks/search_latency.py --products 100000 --queries 30

``--enlarge 3`` searches the query photos enlarged three times (JPEG), the
size of phone uploads (the shared photos are 320-640 px).

``--tails-from STORE`` measures a store whose backbone stages were tuned by
``train-embedder`` (its descriptors then come from the tuned stages).

``--profile FILE`` also runs each photo kind once more under cProfile and
writes the functions that take the most time, per kind, to FILE.

Each padded other_product image also gets the visual words and signatures
of a real photo in the local-feature index (no keypoints: verification
reads the shortlist, whatever the catalogue), so the local step searches a
local-feature index of the store's size, as with a real catalogue;
``--no-local-copies`` leaves that index with the real photos only, which
hides what the local step costs at catalogue scale.

The padded products are near-copies of the real ones under other ids, so
every grocery query has dozens of products about as close as its own: the
local step's confidence gate (``local.skip_margin``, a margin between
products) never skips there, which it does for about a third of these
queries against the real catalogue alone. The produce gate
(``local.skip_produce``) reads the query alone: it skips the grocery photos
of fruit and vegetables (about 60 % of them), whatever the store holds.
``local_step_skipped_share`` and ``local_step_outcomes`` in the output say
how often each did, ``ms_by_local_step`` the searches' times by whether the
local step ran.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, enlarged, rows
from _local_copies import attach_copies
from harness import add_json_argument, rss_mib, summary, write_result

from shoplens import Shoplens
from shoplens.models.openvino_runtime import OpenVinoConvBackbone
from shoplens.store import ImageRecord, ProductRecord, WriteBatch


def build_catalogue(root: Path, tmp: Path, n_clothing: int) -> Path:
    lines = ["product_id,image,title,category,domain"]
    for r in rows(root / "grocery" / "catalog.csv"):
        lines.append(f"g{r['product_id']},{root / 'grocery' / r['image']},{r['title']},{r['category']},other_product")
    clothing = [r for r in rows(root / "clothing" / "labels.csv") if r["label"] not in ("Not sure", "Skip", "Other")]
    for i, r in enumerate(clothing[:n_clothing]):
        lines.append(f"c{i},{root / 'clothing' / r['image']},{r['label']} {i},{r['label']},apparel")
    path = tmp / "catalog.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def pad(lens: Shoplens, target: int, seed: int = 0) -> None:
    """Add perturbed copies of the stored descriptors until the store holds ``target`` products."""
    rng = np.random.default_rng(seed)
    base: dict[str, np.ndarray] = {}
    for domain in ("apparel", "other_product"):
        chunks = [raw for _, raw in lens.store.iter_raw(domain)]
        if chunks:
            base[domain] = np.concatenate(chunks)
    have = lens.count_products()
    domains = list(base)
    batch_size = 5000
    while have < target:
        n = min(batch_size, target - have)
        batch = WriteBatch()
        for j in range(n):
            domain = domains[j % len(domains)]
            src = base[domain][rng.integers(len(base[domain]))]
            raw = src * (1 + 0.15 * rng.standard_normal(src.shape)).astype(np.float32)
            pid = f"pad{have + j}"
            batch.products.append(ProductRecord(pid, None, f"pad-{domain}-{j % 40}", "catalogue", domain, "catalogue", {}))
            batch.add_images.append(ImageRecord(pid, f"synthetic:{pid}", "-", domain, lens.pipeline.embedders[domain].signature, np.maximum(raw, 0)))
        lens.store.write(batch)
        have += n
    lens.store.persist()


def pad_local(lens: Shoplens) -> int:
    """Index every padded other_product image in the local-feature index as a copy of a real photo's words."""
    stage = lens.pipeline.local
    if stage is None or stage.index is None:
        return 0
    index = stage.index
    new = np.setdiff1d(lens.store.image_ids("other_product"), index.ids())
    if not len(new):
        return 0
    real = [pair for seg in index._segments for row, pair in enumerate(seg.postings.image_words()) if seg.alive[row]]
    attach_copies(index, new, real)
    index.save(stage.directory)
    return len(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=0, help="pad the store to this many products (0: real photos only)")
    ap.add_argument("--clothing", type=int, default=300, help="clothing photos indexed as apparel products")
    ap.add_argument("--queries", type=int, default=30, help="queries per kind")
    ap.add_argument("--store", help="reuse this store folder (default: a temporary one)")
    ap.add_argument("--warmup", type=int, default=2, help=(
        "searches of each kind before timing (default 2): model loading, first-call costs and the runtime's "
        "planning of input shapes it has not met are not search costs (30: every query photo once)"))
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile summary per photo kind to FILE")
    ap.add_argument("--enlarge", type=float, default=1.0, help=(
        "search the query photos enlarged this many times, as JPEG (quality 90): upload-sized photos; "
        "the stored catalogue is unchanged"))
    ap.add_argument("--local-copies", action=argparse.BooleanOptionalAction, default=True,
                    help="index the padded grocery images in the local-feature index too (default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="configuration override")
    ap.add_argument("--tails-from", action="append", default=[], metavar="STORE", help=(
        "copy the tuned backbone stages (models/tail_*.pt) of this store first, as after 'train-embedder' (repeatable)"))
    add_json_argument(ap, "search_latency")
    args = ap.parse_args()
    root = data_root()
    flags = dict(s.split("=", 1) for s in args.set)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        store = Path(args.store) if args.store else tmp / "store"
        for other in args.tails_from:
            (store / "models").mkdir(parents=True, exist_ok=True)
            for tail in Path(other, "models").glob("tail_*.pt"):
                shutil.copy(tail, store / "models" / tail.name)
        with Shoplens(store, **flags) as lens:
            t0 = time.perf_counter()
            lens.index(build_catalogue(root, tmp, args.clothing))
            index_s = time.perf_counter() - t0
            if args.products:
                pad(lens, args.products)
            local_copies = pad_local(lens) if args.local_copies else 0
            rng = random.Random(0)
            kinds = {
                "non_product": [root / "nonproduct" / r["image"] for r in rows(root / "nonproduct" / "images.csv")],
                "other_product": [root / "grocery" / r["image"] for r in rows(root / "grocery" / "photos.csv") if r["split"] == "val"],
                "apparel": [root / "outfits" / json.loads(line)["image"] for line in (root / "outfits" / "garments.jsonl").read_text().splitlines()],
            }
            picked: dict[str, list] = {k: rng.sample(v, min(args.queries, len(v))) for k, v in kinds.items()}
            if args.enlarge > 1:  # phone-sized uploads: the shared photos are 320-640 px
                picked = {k: [enlarged(p, args.enlarge) for p in v] for k, v in picked.items()}
            for k in picked:  # warm-up: model loading and first-call costs are not search costs
                for photo in picked[k][: args.warmup]:
                    lens.search([photo])
            times: dict[str, list[float]] = {k: [] for k in kinds}
            by_intent: dict[str, list[float]] = {}
            steps: dict[str, dict[str, list[float]]] = {}
            # CPU time of the whole process (all its threads) per search: what
            # the search costs, whatever the other jobs on the machine do.
            cpu: dict[str, list[float]] = {}
            # Minor page faults per search: memory the allocator handed back and takes again
            # (shoplens.allocator, runtime.malloc_trim_mib).
            faults: dict[str, list[float]] = {}
            # What each search's local step did: "ran", or why it was skipped
            # ("margin": local.skip_margin, "produce": local.skip_produce); and the
            # searches' times by that.
            local_done: dict[str, list[str]] = {}
            by_local: dict[str, list[float]] = {}
            for i in range(args.queries):
                for kind, photos in picked.items():
                    if i < len(photos):
                        cpu0, faults0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                        r = lens.search([photos[i]])[0]
                        cpu.setdefault(r.intent, []).append((time.process_time() - cpu0) * 1000.0)  # type: ignore[union-attr]
                        faults.setdefault(r.intent, []).append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)  # type: ignore[union-attr]
                        total = r.timings_ms["total"]  # type: ignore[union-attr]
                        local = r.steps.get("local")  # type: ignore[union-attr]
                        if local and local.get("enabled"):
                            done = next((why for why in ("margin", "produce") if why in local), "ran") if local.get("skipped") else "ran"
                            local_done.setdefault(r.intent, []).append(done)  # type: ignore[union-attr]
                            by_local.setdefault("ran" if done == "ran" else "skipped", []).append(total)
                        times[kind].append(total)
                        by_intent.setdefault(r.intent, []).append(total)  # type: ignore[union-attr]
                        for step, ms in r.timings_ms.items():  # type: ignore[union-attr]
                            steps.setdefault(r.intent, {}).setdefault(step, []).append(ms)  # type: ignore[union-attr]
            if args.profile:
                report = []
                for kind, photos in picked.items():
                    prof = cProfile.Profile()
                    prof.enable()
                    lens.search(photos)
                    prof.disable()
                    buf = io.StringIO()
                    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
                    report.append(f"## {kind}: {len(photos)} searches, sorted by own time\n\n{buf.getvalue()}")
                Path(args.profile).write_text("\n".join(report))
            n_products = lens.count_products()
            local_images = len(lens.pipeline.local) if lens.pipeline.local is not None else 0
            rss_after = round(rss_mib())
            # Input shapes OpenVINO compiled on their own (runtime.static_shapes), per backbone.
            fixed_shapes = {name: ["x".join(map(str, shape[2:])) for ((_, shape),) in b._session.wait_fixed()]
                            for name, b in lens.pipeline._backbones.items() if isinstance(b, OpenVinoConvBackbone)}
            config = lens.config

    stats = summary
    out = {
        "products": n_products,
        "query_photos_enlarged": args.enlarge,
        "detector": config.detect.detector if config.detect.enabled else "off",
        "runtime": config.runtime.engine,
        "index_real_photos_s": round(index_s, 1),
        "by_photo_kind_ms": {k: stats(v) for k, v in times.items()},
        "by_predicted_intent_ms": {k: stats(v) for k, v in by_intent.items()},
    }
    out["rss_after_searches_mib"] = rss_after
    out["local_index_images"] = local_images
    out["openvino_fixed_shapes"] = fixed_shapes
    if local_copies:
        out["local_copies_added"] = local_copies
    out["process_cpu_ms_by_intent"] = {k: stats(v) for k, v in cpu.items()}
    out["minor_page_faults_by_intent"] = {k: stats(v) for k, v in faults.items()}
    out["local_step_skipped_share"] = {k: round(sum(d != "ran" for d in v) / len(v), 3) for k, v in local_done.items()}
    out["local_step_outcomes"] = {k: dict(Counter(v)) for k, v in local_done.items()}
    out["ms_by_local_step"] = {k: stats(v) for k, v in by_local.items()}
    out["step_p50_ms_by_intent"] = {k: {s: round(statistics.median(v), 1) for s, v in st.items()} for k, st in steps.items()}
    a, n = out["by_predicted_intent_ms"].get("apparel", {}), out["by_predicted_intent_ms"].get("non_product", {})
    if a.get("n") and n.get("n"):
        out["non_product_over_apparel_p50"] = round(n["p50"] / a["p50"], 3)
    o = out["by_predicted_intent_ms"].get("other_product", {})
    if o.get("n") and n.get("n"):
        out["non_product_over_other_product_p50"] = round(n["p50"] / o["p50"], 3)
    print(json.dumps(out, indent=2))
    write_result("search_latency", out, args.json)


if __name__ == "__main__":
    main()
