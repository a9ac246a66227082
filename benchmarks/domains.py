"""Which partition a folder catalogue of garments lands in: per photo, and after ``shoplens index``.

Builds a folder catalogue of symlinks to the real clothing photos (the first
``--per-category`` photos of each of ``--categories`` in ``clothing/labels.csv``,
one folder per category), prints what the intent classifier says of each photo
on its own (one photo, one vote) and how many products of each category the
store holds in each partition after indexing the folder with no domain given.

    PYTHONPATH=src python benchmarks/domains.py [--json out.json]
    PYTHONPATH=src python benchmarks/domains.py --second-domain   # how often an unsure gate searches both partitions

``--second-domain`` classifies 800 clothing photos (seeded sample), the 600
outfits and 800 grocery store photos (seeded sample) and reports, per
``intent.second_domain_share``, the share of photos searched in both product
partitions and how many of those the gate sends to the wrong one it reaches.

Photos are read from $SHOPLENS_DATA (default: ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows  # noqa: E402

from shoplens import Shoplens  # noqa: E402
from shoplens.config import DOMAINS  # noqa: E402
from shoplens.imaging import load_image  # noqa: E402
from shoplens.pipeline import EncodingCache  # noqa: E402

CATEGORIES = "T-Shirt,Longsleeve,Pants,Shoes,Outwear,Dress,Hat,Skirt"


def clothing_folder(root: Path, categories: list[str], per_category: int) -> Path:
    """A folder catalogue of symlinks: ``<tmp>/<category>/<photo>.jpg``."""
    clothing = data_root() / "clothing"
    taken: Counter[str] = Counter()
    for r in rows(clothing / "labels.csv"):
        label = r["label"]
        if label in categories and taken[label] < per_category:
            folder = root / label
            folder.mkdir(parents=True, exist_ok=True)
            src = clothing / r["image"]
            (folder / src.name).symlink_to(src)
            taken[label] += 1
    return root


def second_domain(shares: list[float]) -> dict[str, object]:
    import random

    from shoplens.pipeline import Pipeline

    root = data_root()
    clothing = [r for r in rows(root / "clothing" / "labels.csv") if r["label"] not in ("Not sure", "Skip", "Other")]
    random.Random(0).shuffle(clothing)
    grocery = rows(root / "grocery" / "photos.csv")
    random.Random(0).shuffle(grocery)
    outfits = [json.loads(line)["image"] for line in (root / "outfits" / "garments.jsonl").read_text().splitlines() if line]
    sets = {
        "clothing": ([root / "clothing" / r["image"] for r in clothing[:800]], "apparel"),
        "outfits": ([root / "outfits" / x for x in outfits], "apparel"),
        "grocery": ([root / "grocery" / r["image"] for r in grocery[:800]], "other_product"),
    }
    out: dict[str, object] = {}
    for name, (paths, right) in sets.items():
        pipeline = Pipeline()
        probs = np.concatenate([pipeline.classify(EncodingCache(pipeline, [load_image(x, target_size=224) for x in paths[i : i + 32]]))
                                for i in range(0, len(paths), 32)])
        per: dict[str, object] = {}
        for share in shares:
            pipeline.config.intent.second_domain_share = share
            both = wrong = reached = 0
            for pr in probs:
                domain = pipeline.intent_of(pr)
                if domain == "non_product":
                    continue
                also = pipeline.second_domain(pr, domain) is not None
                both += also
                wrong += domain != right
                reached += also and domain != right
            per[str(share)] = {"both": round(both / len(paths), 3), "wrong_domain": wrong, "wrong_reached": reached}
        out[name] = {"photos": len(paths), "by_share": per}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--categories", default=CATEGORIES)
    ap.add_argument("--per-category", type=int, default=20)
    ap.add_argument("--second-domain", action="store_true", help="the unsure gate's second search instead")
    ap.add_argument("--shares", default="0.02,0.05,0.1,0.2,0.3")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.second_domain:
        figures = second_domain([float(x) for x in args.shares.split(",")])
        print(json.dumps(figures, indent=1))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
        return 0
    categories = args.categories.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = clothing_folder(Path(tmp) / "clothes", categories, args.per_category)
        with Shoplens(Path(tmp) / "store") as lens:
            photos = sorted(p for p in folder.rglob("*.jpg"))
            per_photo: dict[str, Counter[str]] = {c: Counter() for c in categories}
            for p in photos:
                probs = lens.pipeline.classify(EncodingCache(lens.pipeline, [load_image(p)]))[0]
                per_photo[p.parent.name][DOMAINS[int(np.argmax(probs[: len(DOMAINS)]))]] += 1
            report = lens.index(folder)
            stored: dict[str, Counter[str]] = {c: Counter() for c in categories}
            for rec in lens.store.iter_products():
                stored[rec.category or ""][rec.domain] += 1
    result = {
        "photos": len(photos),
        "per_photo": {c: dict(v) for c, v in per_photo.items()},
        "per_photo_other_product": sum(v["other_product"] for v in per_photo.values()),
        "indexed": {c: dict(v) for c, v in stored.items()},
        "indexed_other_product": sum(v["other_product"] for v in stored.values()),
        "domains_inferred": report.domains_inferred,
    }
    print(json.dumps(result, indent=1))
    print()
    print("| category | per photo: apparel / other_product | indexed: apparel / other_product |")
    print("|---|---|---|")
    for c in categories:
        a, s = per_photo[c], stored[c]
        print(f"| {c} | {a['apparel']} / {a['other_product']} | {s['apparel']} / {s['other_product']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
