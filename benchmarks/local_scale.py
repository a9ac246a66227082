"""The local-feature index at catalogue scale: query time and memory per image.

Padded products have descriptors only, no photos, so a local-feature index
built from them would hold the real photos alone (search_latency.py gives
them copies of real photos' words). This measures the index itself at N images:
SIFT features of real grocery store photos (``--base`` of them, each a
catalogue image with ~1,000 keypoints) are encoded once, and their visual
words and ASMK signatures are repeated to N images (copies share the same
words, so posting lists grow as with N photos like them). Queries: grocery
``val`` photos, their features extracted once; timed is
``LocalIndex.query`` (visual words of the query + ASMK scoring of the
stored words), what the local step runs besides SIFT and verification,
neither of which grows with the catalogue: over every image
(``local.scope = "all"``) and over 200 candidate images, as many as a
search's global candidates (``local.scope = "candidates"``; random images
here, each a copy of a real photo).

Memory: the stored words' and signatures' bytes per image (``LocalIndex.memory``) and the
RSS of the process before and after attaching it; the keypoints kept for
verification are measured on the real photos (on disk, memory-mapped once
saved) and scale with N.

    python benchmarks/local_scale.py --images 2000,10000,30000,100000 --queries 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows
from _local_copies import attach_copies
from harness import add_json_argument, rss_mib, write_result

from shoplens.imaging import load_image
from shoplens.local.index import LocalConfig, LocalIndex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="2000,10000,30000,100000", help="catalogue sizes (images in the local index)")
    ap.add_argument("--base", type=int, default=400, help="real store photos whose features are repeated")
    ap.add_argument("--queries", type=int, default=20, help="val photos searched at each size")
    ap.add_argument("--rounds", type=int, default=3)
    add_json_argument(ap, "local_scale")
    args = ap.parse_args()
    root = data_root()
    photos = rows(root / "grocery" / "photos.csv")
    train = [root / "grocery" / r["image"] for r in photos if r["split"] == "train"]
    val = [root / "grocery" / r["image"] for r in photos if r["split"] == "val"]
    config = LocalConfig()
    probe = LocalIndex(None, config)
    t0 = time.perf_counter()
    base = [probe.extract(load_image(p, target_size=config.max_side)) for p in train[:: max(1, len(train) // args.base)][: args.base]]
    extract_s = time.perf_counter() - t0
    encoded = [probe._encode(f, 1) for f in base]  # words + ASMK signatures, as LocalIndex.add makes them
    queries = [probe.extract_query(load_image(p, target_size=config.query_side)) for p in val[:: max(1, len(val) // args.queries)][: args.queries]]
    keypoints = float(np.mean([len(f) for f in base]))
    disk_per_image = float(np.mean([f.nbytes for f in base]))
    out: dict[str, object] = {
        "base_photos": len(base), "keypoints_per_photo": round(keypoints), "extract_ms_per_photo": round(1000 * extract_s / len(base), 1),
        "verification_features_kib_per_image": round(disk_per_image / 1024, 1), "sizes": {},
    }
    q_words = [probe._encode(q, config.query_assignments)[0] for q in queries]  # the same at every size
    for n in (int(s) for s in args.images.split(",")):
        index = LocalIndex(probe.vocabulary, config)
        before = rss_mib()
        segment = attach_copies(index, np.arange(n), encoded, base)  # one segment of n images
        after = rss_mib()
        rng = np.random.default_rng(n)
        among = [rng.choice(n, size=min(n, 200), replace=False) for _ in queries]
        for q in queries[:3]:  # warm-up
            index.query(q, config.candidates)
            index.query(q, 200, among=among[0])
        times: list[float] = []
        times_among: list[float] = []
        for _ in range(args.rounds):
            for q, cands in zip(queries, among):
                t = time.perf_counter()
                index.query(q, config.candidates)
                times.append((time.perf_counter() - t) * 1000.0)
                t = time.perf_counter()
                index.query(q, len(cands), among=cands)
                times_among.append((time.perf_counter() - t) * 1000.0)
        entries = int(segment.postings.words.shape[0])
        held = segment.postings.word_counts(segment.alive)  # images holding each word
        scored = [int(held[w].sum()) for w in q_words]  # entries on the query's words, shared or not
        mem = index.memory()
        out["sizes"][str(n)] = {  # type: ignore[index]
            "query_ms_p50": round(statistics.median(times), 1), "query_ms_p95": round(float(np.percentile(times, 95)), 1),
            "query_200_candidates_ms_p50": round(statistics.median(times_among), 1),
            "query_200_candidates_ms_p95": round(float(np.percentile(times_among, 95)), 1),
            "posting_entries_scored_per_query": int(np.median(scored)),
            "inverted_file_kib_per_image": round(mem["ram_per_image"] / 1024, 2),
            "inverted_file_mib": round(segment.postings.nbytes / 2**20, 1), "posting_entries": entries,
            "rss_growth_mib": round(after - before, 1),
        }
        print(n, json.dumps(out["sizes"][str(n)]), file=sys.stderr, flush=True)  # type: ignore[index]
        del index, segment
    print(json.dumps(out, indent=2))
    write_result("local_scale", out, args.json)


if __name__ == "__main__":
    main()
