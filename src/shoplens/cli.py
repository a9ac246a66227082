"""The ``shoplens`` command line: a thin face over the Python API.

``--json`` output follows the schema of docs/method.md exactly: one JSON object per line per input
image. An image that cannot be read gives ``{"image", "error"}`` and the
others go on; the exit code is 1 if any image (or catalogue row) failed, 2 on
a usage, configuration or store error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Config, options_summary, resolve_config
from .errors import ConfigError, ShoplensError

if TYPE_CHECKING:
    from .pipeline import Pipeline

# The engine (torch, the models, the stores) is imported by the commands that use it, not here:
# ``shoplens --help`` and a mistyped option answer at once.

log = logging.getLogger("shoplens")

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_ERROR = 0, 1, 2


# -- option groups ------------------------------------------------------------
def _add_config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (defaults < store's saved config < --config file < flags)")
    g.add_argument("--config", metavar="FILE", help="JSON or TOML configuration file (see docs/configuration.md)")
    g.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="set any configuration option by its dotted name, e.g. --set search.similar_k=100 (repeatable)",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--intent-classifier", metavar="NAME", help="intent classifier: auto (trained if the store has one, else imagenet-map), imagenet-map, trained")
    g.add_argument("--no-intent", action="store_true", help="switch the intent gate off: no photo is stopped as non_product")
    g.add_argument("--detector", metavar="NAME", help="garment detector (see 'shoplens models')")
    g.add_argument("--no-detect", action="store_true", help="switch garment detection off: apparel photos are searched whole")


def _add_search_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search steps (steps 3-6 of docs/method.md)")
    g.add_argument("--top-k", type=int, metavar="N", help="cap of each result list (default 10)")
    g.add_argument("--similar-k", type=int, metavar="N", help="cap of the similar set fetched from the index (default 50)")
    g.add_argument("--max-distance", type=float, metavar="D", help="neighbours farther than D are not similar (0..2, default 2)")
    g.add_argument("--min-rank", type=float, metavar="R", help="drop results with rank = 2 - distance below R (default 1.08)")
    g.add_argument("--no-rank-filter", action="store_true", help="switch the rank filter (step 4) off")
    g.add_argument("--max-entropy-bits", type=float, metavar="B", help="drop categories whose surprisal exceeds B bits (default 3.0)")
    g.add_argument("--no-entropy-filter", action="store_true", help="switch the category entropy filter (step 5) off")
    g.add_argument("--no-category-order", action="store_true", help="order by rank only, not by category score (step 6)")
    g.add_argument("--no-local-features", action="store_true", help="other_product: search the global embedding only, without the local-feature index")
    g.add_argument("--no-verify", action="store_true", help="other_product: fuse local features without geometric verification (faster)")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ShoplensError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted configuration flags from the parsed options (None = not given)."""

    def get(name: str) -> Any:
        return getattr(args, name, None)

    # The dedicated options override --set; one not given leaves --set (and the store's saved value) alone.
    options: dict[str, Any] = (
        {
            "intent.classifier": get("intent_classifier"),
            "intent.enabled": False if get("no_intent") else None,
            "detect.detector": get("detector"),
            "detect.enabled": False if get("no_detect") else None,
            "search.top_k": get("top_k"),
            "search.similar_k": get("similar_k"),
            "search.max_distance": get("max_distance"),
            "search.min_rank": get("min_rank"),
            "search.rank_filter": False if get("no_rank_filter") else None,
            "search.max_entropy_bits": get("max_entropy_bits"),
            "search.entropy_filter": False if get("no_entropy_filter") else None,
            "search.category_order": False if get("no_category_order") else None,
            "local.enabled": False if get("no_local_features") else None,
            "local.verify": False if get("no_verify") else None,
        }
    )
    flags: dict[str, Any] = _parse_set(getattr(args, "set", []) or [])
    flags.update({k: v for k, v in options.items() if v is not None})
    return flags


def _config(args: argparse.Namespace) -> Config:
    return resolve_config(getattr(args, "config", None), **_flags(args))


# -- output -------------------------------------------------------------------
def _emit(results: Sequence[Any], as_json: bool, human: Callable[[Any], str]) -> int:
    from .results import ErrorResult

    failed = 0
    for r in results:
        if isinstance(r, ErrorResult):
            failed += 1
        if as_json:
            sys.stdout.write(json.dumps(r.model_dump(mode="json"), ensure_ascii=False) + "\n")
        elif isinstance(r, ErrorResult):
            sys.stdout.write(f"{r.image}: error: {r.error}\n")
        else:
            sys.stdout.write(human(r) + "\n")
        sys.stdout.flush()
    return EXIT_FAILED_ITEMS if failed else EXIT_OK


def _searched_as(r: Any) -> str | None:
    """Why a photo was searched in another domain than the classifier's most likely class (None: it was not)."""
    predicted = r.predicted_intent
    if predicted is None or predicted == r.intent:
        return None
    gate = r.steps.get("intent", {})
    why = ("as asked (--domain)" if gate.get("override") else
           f"the gate stops only at non_product {gate.get('stop_score')} or more" if gate.get("uncertain") else
           f"the store has no {predicted} products")
    return f"  looked like {predicted} ({r.intent_scores[predicted]:.2f}); searched as {r.intent}: {why}"


def _human_search(r: Any) -> str:
    lines = [f"{r.image}: {r.intent} ({r.intent_scores[r.intent]:.2f}), {r.timings_ms.get('total', 0):.0f} ms"]
    searched_as = _searched_as(r)
    if searched_as:
        lines.append(searched_as)
    crop = r.steps.get("crop")
    if crop:
        lines.append(f"  searched the region {','.join(str(v) for v in crop['box'])} of the {crop['photo_size'][0]}x{crop['photo_size'][1]} photo")
    if r.intent == "non_product":
        why = f": {r.reason.message}" if r.reason else ""
        lines.append(f"  not a product photo, nothing searched{why}")
        lines.append("  to search it anyway: --domain apparel or --domain other_product")
    for region in r.regions:
        where = ("whole region" if crop else "whole photo") if region.box is None else f"{region.label} at {[round(v) for v in region.box]}"
        why = f": {region.reason.message}" if region.reason else ""
        lines.append(f"  {where}: {len(region.results)} result(s){why}")
        if region.reason and region.reason.hint:
            lines.append(f"    try: {region.reason.hint}")
        for i, hit in enumerate(region.results, 1):
            title = f" {hit.title}" if hit.title else ""
            lines.append(f"    {i:2d}. {hit.product_id}{title} [{hit.category or '-'}] rank {hit.rank:.3f}")
    return "\n".join(lines)


def _human_text(r: Any) -> str:
    lines = [f"{r.text!r}: searched {', '.join(r.domains)} with {', '.join(r.steps['text'].values())}, "
             f"{r.timings_ms.get('total', 0):.0f} ms"]
    for region in r.regions:
        why = f": {region.reason.message}" if region.reason else ""
        lines.append(f"  {region.domain}: {len(region.results)} result(s){why}")
        for i, hit in enumerate(region.results, 1):
            title = f" {hit.title}" if hit.title else ""
            lines.append(f"    {i:2d}. {hit.product_id}{title} [{hit.category or '-'}] rank {hit.rank:.3f}")
    return "\n".join(lines)


def _human_classify(r: Any) -> str:
    scores = ", ".join(f"{k} {v:.2f}" for k, v in r.intent_scores.items())
    return f"{r.image}: {r.intent} ({scores})"


def _human_detect(r: Any) -> str:
    if not r.garments:
        return f"{r.image}: no garment found"
    parts = [f"{g.label} {g.score:.2f} {[round(v) for v in g.box]}" for g in r.garments]
    return f"{r.image}: " + "; ".join(parts)


# -- commands -----------------------------------------------------------------
def cmd_index(args: argparse.Namespace) -> int:
    from .api import Shoplens

    with Shoplens(args.store, config_file=args.config, device=args.device, **_flags(args)) as lens:
        report = lens.index(args.catalogue, domain=args.domain, progress=sys.stderr.isatty() and not args.no_progress)
        total = lens.count_products()
    if args.json:
        sys.stdout.write(json.dumps({**report.to_dict(), "products_in_store": total}) + "\n")
    else:
        sys.stdout.write(
            f"{report.rows} row(s), {report.products} product(s): {report.images_added} image(s) added, "
            f"{report.images_replaced} replaced, {report.images_unchanged} unchanged, {report.images_removed} removed; "
            f"{len(report.failed)} failed; {total} product(s) in {args.store} ({report.timings_s.get('total', 0):.1f} s)\n"
        )
        if report.categories_predicted:
            sys.stdout.write(f"note: {report.categories_predicted} product(s) had no category: shoplens predicted one (category_source 'predicted')\n")
        if report.domains_inferred:
            sys.stdout.write(f"note: {report.domains_inferred} product(s) had no domain: inferred from the intent classifier"
                             f"{_by_category(report.domains_by_category, report.domains_reassigned)} (--domain to say it)\n")
        if report.calibrated:
            sys.stdout.write(f"note: rank filter calibrated on synthetic views of the catalogue photos for {', '.join(report.calibrated)} "
                             f"({report.timings_s.get('calibrate', 0):.1f} s)\n")
        if report.duplicates:
            shown = ", ".join(f"{d['origin']} (as {d['duplicate_of']}{'' if d['cells'] == 'identical' else ', other cells ignored'})"
                              for d in report.duplicates[:10])
            more = f" and {len(report.duplicates) - 10} more" if len(report.duplicates) > 10 else ""
            sys.stdout.write(f"note: {len(report.duplicates)} duplicate row(s) merged (the same product and image as an earlier row): {shown}{more}\n")
        for f in report.failed:
            sys.stdout.write(f"  {f['origin']}: {f['error']}\n")
    return EXIT_FAILED_ITEMS if report.failed else EXIT_OK


def _by_category(categories: dict[str, dict[str, Any]], moved: int) -> str:
    """", by category (majority of its photos): Hat apparel (13 of 20), …; N moved to their category's domain"."""
    if not categories:
        return ""
    parts = [f"{c} {v['domain']} ({v[v['domain']]} of {sum(n for k, n in v.items() if k != 'domain')})"
             for c, v in sorted(categories.items())]
    shown = ", ".join(parts[:12]) + (f" and {len(parts) - 12} more" if len(parts) > 12 else "")
    return f", by category (majority of its photos): {shown}; {moved} moved to their category's domain"


def cmd_search(args: argparse.Namespace) -> int:
    from .api import open_store
    from .imaging import parse_box

    if not args.images and not args.text:
        raise ConfigError("give photos to search with, or words with --text")
    if args.text and args.box:
        raise ConfigError("--box cuts a region of a photo: it does not go with --text")
    box = parse_box(args.box)  # a malformed box fails before the store is opened
    # A reader: needs no writer lock, so it works beside a running server or indexing run.
    with open_store(args.store, read_only=True, config_file=args.config, **_flags(args)) as lens:
        texts = lens.search_text(args.text, top_k=args.top_k, filters=args.filter, domain=args.domain) if args.text else []
        results = lens.search(args.images, top_k=args.top_k, filters=args.filter, domain=args.domain, box=box) if args.images else []
    code = _emit(results, args.json, _human_search) if results else EXIT_OK
    return max(code, _emit(texts, args.json, _human_text))


def _standalone_pipeline(args: argparse.Namespace) -> Pipeline:
    """classify/detect run without an index, but use a store's trained models when --store is given."""
    from .api import open_store
    from .pipeline import Pipeline

    if args.store:
        lens = open_store(args.store, read_only=True, config_file=args.config, **_flags(args))
        return lens.pipeline
    return Pipeline(_config(args))


def cmd_classify(args: argparse.Namespace) -> int:
    from .api import classify_photos

    return _emit(classify_photos(_standalone_pipeline(args), args.images), args.json, _human_classify)


def cmd_detect(args: argparse.Namespace) -> int:
    from .api import detect_photos

    return _emit(detect_photos(_standalone_pipeline(args), args.images), args.json, _human_detect)


def cmd_models(args: argparse.Namespace) -> int:
    from .detect import describe_detectors
    from .intent import describe_intent_classifiers
    from .models import get_entry, list_models, list_schemes

    out: dict[str, Any] = {
        "backbones": {n: get_entry(n).description for n in list_models()},
        "backbone_schemes": [f"{s}:..." for s in list_schemes()],
        "intent_classifiers": describe_intent_classifiers(),
        "detectors": describe_detectors(),
    }
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        for section, entries in out.items():
            sys.stdout.write(f"{section}:\n")
            items = entries.items() if isinstance(entries, dict) else ((e, "") for e in entries)
            for name, desc in items:
                sys.stdout.write(f"  {name:28s} {desc}\n")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    if args.store:
        from .api import open_store

        with open_store(args.store, read_only=True, config_file=args.config, **_flags(args)) as lens:
            config = lens.config
    else:
        config = _config(args)
    sys.stdout.write(json.dumps(config.to_dict(), indent=2) + "\n")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .api import Shoplens
    from .demo import sample_answers, sample_catalogue, sample_root

    progress = sys.stderr.isatty()
    root = sample_root(Path(args.source) if args.source else None, url=args.url, sha256=args.sha256, progress=progress)
    catalogue, queries = sample_catalogue(root)
    photos = args.images or [str(q) for q in queries]
    answers = {} if args.images else sample_answers(root, queries)

    def say(text: str) -> None:
        if not args.json:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    before: list[Any] = []
    with Shoplens(args.store, config_file=args.config, **_flags(args)) as lens:
        report = lens.index(catalogue, progress=progress)
        say(f"indexed {report.products} sample product(s) into {args.store} ({report.timings_s.get('total', 0):.1f} s)")
        labelled = _demo_labelled(lens, root, args.adapt, args.store, say)
        if labelled is not None:
            if answers and not args.json:  # the untrained places, for the notes (the user's own photos have none)
                before = lens.search(photos, top_k=5)
                say(_demo_summary("untrained (the catalogue photos alone): ", before, answers))
            how = "the head and the backbone's last stage, about 5 minutes" if args.adapt == "full" else "its head, about a minute"
            say(f"adapting the search to the sample's labelled store photos, as 'shoplens train-embedder --labelled' "
                f"does with a shop's own ({how} on 2 cores) …")
            adapted = lens.train_embedder(labelled, domains=["other_product"], tune_backbone=args.adapt == "full",
                                          progress=progress)["other_product"]
            h = adapted.heldout
            check = f": held-out R@1 against the catalogue {h['r1_untrained']:.2f} -> {h['r1_trained']:.2f}" if h else ""
            say(f"adapted to {adapted.extra_images} labelled store photo(s){check}\n")
        results = lens.search(photos, top_k=5)
        titles = {pid: rec.title or "" for pid, rec in lens.store.get_products(sorted(set(answers.values()))).items()}
    if args.json:
        return _emit(results, True, _human_search)
    untrained = dict(zip(photos, before))
    code = _emit(results, False, lambda r: _human_search(r) + _demo_answer(r, answers, titles, untrained.get(r.image)))
    if answers:
        label = "adapted: " if before else ""
        evaluate = f"; on every held-out store photo: shoplens eval {root / 'photos.csv'} --only split=val --store {args.store}"
        say("\n" + _demo_summary(label, results, answers) + (evaluate if (root / "photos.csv").exists() else ""))
    say(f"\nnext: shoplens search YOUR_PHOTO.jpg --store {args.store}")
    return code


def _demo_labelled(lens: Any, root: Path, adapt: str, store: str, say: Callable[[str], None]) -> Path | None:
    """The CSV of the sample's labelled photos the demo adapts to; None where it does not adapt (and says why)."""
    from .demo import cache_dir, sample_labelled

    if adapt == "none":
        return None
    if lens.store.artifacts.head("other_product").exists():
        say(f"the search in {store} is already adapted (the store has a trained head): not training again; "
            "delete the store folder to see the untrained search and the adaptation again")
        return None
    try:
        return sample_labelled(root, cache_dir() / "demo" / f"{root.name}-labelled.csv")
    except ShoplensError as e:
        say(f"not adapting the search: {e}")
        return None


def _demo_summary(label: str, results: Sequence[Any], answers: dict[str, str]) -> str:
    """One line: for how many of the photos the product shown came first, and came in the top 5."""
    places = [_place_of(r, answers) for r in results]
    first, top = sum(p == 1 for p in places), sum(p is not None for p in places)
    return f"{label}the product shown came first for {first} of {len(places)} photo(s), in the top 5 for {top}"


def _place_of(r: Any, answers: dict[str, str]) -> int | None:
    """Where the product the photo shows came in its best region's list (1 = first); None: not listed."""
    want = answers.get(str(Path(r.image).resolve())) if hasattr(r, "regions") else None
    places = [i for region in getattr(r, "regions", []) for i, h in enumerate(region.results, 1) if h.product_id == want]
    return min(places) if places else None


def _demo_answer(r: Any, answers: dict[str, str], titles: dict[str, str], untrained: Any = None) -> str:
    """The demo's note under a photo's results: which product it shows, where it came, and where it came untrained."""
    want = answers.get(str(Path(r.image).resolve()))
    if want is None:
        return ""

    def where(result: Any) -> str:
        place = _place_of(result, answers)
        return f"#{place}" if place is not None else "not in the top 5"

    before = f" (untrained: {where(untrained)})" if untrained is not None else ""
    return f"\n  this photo shows {want} {titles.get(want, '')}".rstrip() + f": {where(r)}{before}"


def cmd_train_intent(args: argparse.Namespace) -> int:
    from .api import Shoplens

    with Shoplens(args.store, config_file=args.config, **_flags(args)) as lens:
        report = lens.train_intent(args.labelled, holdout=args.holdout, seed=args.seed, progress=sys.stderr.isatty())
    d = report.to_dict()
    if args.json:
        sys.stdout.write(json.dumps(d) + "\n")
    else:
        acc = "no held-out part" if d["accuracy"] is None else f"held-out accuracy {d['accuracy']:.3f} on {d['n_test']} photo(s)"
        sys.stdout.write(f"trained on {d['n_train']} photo(s) ({d['n_skipped']} unreadable skipped): {acc}\n")
        if d.get("confusion") is not None and d["accuracy"] is not None:
            sys.stdout.write(f"confusion (rows true, cols predicted; apparel, other_product, non_product): {d['confusion']}\n")
        sys.stdout.write(f"saved to {d['path']}; searches in {args.store} now use it\n")
        if d.get("domains") and d["domains"]["products"]:
            dom = d["domains"]
            sys.stdout.write(f"products whose domain was inferred: {dom['products']} classified again, "
                             f"{dom['domains_reassigned']} moved to the domain it now gives their category\n")
    return EXIT_OK


def cmd_train_embedder(args: argparse.Namespace) -> int:
    from .api import Shoplens

    with Shoplens(args.store, create=False, config_file=args.config, **_flags(args)) as lens:
        reports = lens.train_embedder(args.labelled, domains=args.domain, holdout=args.holdout, seed=args.seed,
                                      target_precision=args.precision, tune_backbone=not args.no_tune_backbone,
                                      progress=sys.stderr.isatty())
    if args.json:
        sys.stdout.write(json.dumps({d: r.to_dict() for d, r in reports.items()}) + "\n")
        return EXIT_OK
    for domain, r in reports.items():
        if r.labels is None:
            sys.stdout.write(f"{domain}: not trained ({r.reason}); untrained head {r.method}\n")
        else:
            sys.stdout.write(f"{domain}: trained a {r.dim}-d {r.method} head on {r.images} image(s) "
                             f"({r.extra_images} labelled extra) to tell {r.classes} {r.labels} label(s) apart in {r.train_s:.1f}s\n")
        tail = r.tail or {}
        if tail.get("tuned"):
            sys.stdout.write(f"  backbone stage tuned on {tail['images']} photo(s) ({tail['labels']} labels) in {tail['train_s']:.1f}s; "
                             f"{tail['reencoded']} stored image(s) re-encoded\n")
        elif tail.get("reason") and tail["reason"] != "not asked":
            sys.stdout.write(f"  backbone stage not tuned: {tail['reason']}\n")
        if r.heldout:
            h = r.heldout
            sys.stdout.write(f"  held-out check: R@1 against the catalogue {h['r1_untrained']:.3f} untrained -> "
                             f"{h['r1_trained']:.3f} trained ({h['queries']} photo(s))\n")
        if r.calibration is not None:
            c = r.calibration
            sys.stdout.write(f"  rank calibrated: the default min_rank keeps hits of the same {c.relevance} with precision "
                             f"{c.target_precision:.2f} (measured {c.info.get('fitted_precision')}, recall {c.info.get('fitted_recall')})\n")
        elif r.labels is not None:
            sys.stdout.write("  rank calibrated on synthetic views of the catalogue photos (no held-out labelled photo)\n")
        skipped = {k: v for k, v in r.extra.items() if k in ("unknown_product", "unreadable") and v}
        if skipped:
            sys.stdout.write(f"  skipped labelled photos: {skipped}\n")
    gate = next((r.extra["gate"] for r in reports.values() if "gate" in r.extra), None)
    if gate is not None:
        if gate["stop_score"] != gate["stop_score_before"]:
            sys.stdout.write(f"intent gate: stop_score {gate['stop_score_before']} -> {gate['stop_score']}, so that "
                             f"{gate['searched']:.1%} of the {gate['photos']} labelled photos are searched "
                             f"(was {gate['searched_before']:.1%})\n")
        else:
            sys.stdout.write(f"intent gate: stop_score {gate['stop_score']} kept ({gate['searched']:.1%} of the "
                             f"{gate['photos']} labelled photos are searched)\n")
    sys.stdout.write(f"saved in {args.store}; its vectors were re-projected\n")
    return EXIT_OK


def cmd_train_detector(args: argparse.Namespace) -> int:
    from .detect.train import train_detector

    kw = {} if args.epochs is None else {"epochs": args.epochs}
    report = train_detector(Path(args.outfits), Path(args.out), seed=args.seed, device=args.device, progress=sys.stderr.isatty(), **kw)
    d = report.to_dict()
    if args.json:
        sys.stdout.write(json.dumps(d) + "\n")
    else:
        per = ", ".join(f"{k} {v:.3f}" for k, v in d["recall_per_label"].items())
        sys.stdout.write(
            f"trained on {d['train_photos']} photo(s); held-out {d['val_photos']}: recall@IoU0.5 {d['recall']:.3f} ({per}), "
            f"precision {d['precision']:.3f}, {d['boxes_per_photo']:.2f} boxes/photo, {d['ms_per_photo']:.0f} ms/photo\n"
            f"saved to {d['out_path']}; use it with --set detect.detector=head:{d['out_path']}\n"
        )
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import Shoplens
    from .eval.metrics import read_queries
    from .eval.report import write_html
    from .eval.runner import run_eval

    only = dict(item.split("=", 1) for item in args.only) if args.only else None
    if args.only and any("=" not in item for item in args.only):
        raise ShoplensError("--only expects COLUMN=VALUE")
    queries = read_queries(args.queries, only)
    # A writer only when it indexes a catalogue first.
    with Shoplens(args.store, create=bool(args.catalogue), read_only=not args.catalogue, config_file=args.config, **_flags(args)) as lens:
        if args.catalogue:
            lens.index(args.catalogue, progress=sys.stderr.isatty())
        report, outcomes = run_eval(lens, queries, ks=args.k, progress=sys.stderr.isatty())
    if args.report:
        write_html(args.report, report, outcomes, title=f"shoplens eval: {Path(args.queries).name}")
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    else:
        d = report.to_dict()
        recall = ", ".join(f"R@{k} {v:.3f}" for k, v in d["recall_at"].items())
        sys.stdout.write(f"{d['queries']} queries ({d['failed']} unreadable): {recall or 'no product labels'}; mAP {d['map']}\n")
        sys.stdout.write(f"returned set: {d['returned']}\n")
        if d["lost_by_step"]:
            sys.stdout.write("expected product lost by step (share of queries): "
                             + ", ".join(f"{k} {v:.3f}" for k, v in d["lost_by_step"].items()) + "\n")
        if d["intent_accuracy"] is not None:
            sys.stdout.write(f"intent accuracy {d['intent_accuracy']:.3f}, confusion (rows true, cols predicted) {d['intent_confusion']}\n")
        sys.stdout.write("time per step (ms, mean/p50/p95): " + ", ".join(f"{k} {v['mean']}/{v['p50']}/{v['p95']}" for k, v in d["timings_ms"].items()) + "\n")
        if args.report:
            sys.stdout.write(f"report: {args.report}\n")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from .api import Shoplens
    from .server import ServerSettings, serve

    settings = ServerSettings.from_env(
        api_key_file=args.api_key_file,
        read_key_file=args.read_key_file,
        cors_origins=args.cors_origin or None,
        url_allowlist=args.allow_url or None,
        max_upload_bytes=None if args.max_upload_mb is None else int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_decoded_bytes=None if args.max_decoded_mb is None else int(args.max_decoded_mb * 1024 * 1024),
        search_concurrency=args.search_concurrency,
        persist_interval_s=args.persist_interval,
        card_fields=None if args.card_fields is None else [f.strip() for f in args.card_fields.split(",") if f.strip()],
        max_batch_photos=args.max_batch_photos,
        import_root=args.import_root,
    )
    with Shoplens(args.store, config_file=args.config, create=args.create, search_concurrency=settings.search_concurrency,
                  **_flags(args)) as lens:
        writes = "enabled (API key set)" if settings.writes_enabled else "disabled: no API key (set SHOPLENS_API_KEY or --api-key-file)"
        reads = "need the read key (or the write key)" if settings.reads_need_key else "open to anyone (set SHOPLENS_READ_KEY or --read-key-file to protect them)"
        sys.stderr.write(f"shoplens: serving {args.store} ({lens.count_products()} products) at http://{args.host}:{args.port}/ ; writes {writes}; "
                         f"search and reads {reads}\n")
        serve(lens, settings, host=args.host, port=args.port, log_level="debug" if args.verbose > 1 else "info" if args.verbose else "warning")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from .api import migrate

    report = migrate(args.source, args.target)
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    else:
        images = ", ".join(f"{n} {d}" for d, n in report.images.items())
        sys.stdout.write(f"migrated {report.products} product(s), images: {images}, {len(report.files)} file(s) to {args.target} (counts verified)\n")
    return EXIT_OK


# -- parser -------------------------------------------------------------------

def _add_index_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="add or update the products of a catalogue CSV or folder", description=(
        "Add or update products. CATALOGUE is a CSV (columns product_id, image; optional title, category, domain "
        "and any metadata columns) or a folder of images (product_id = file stem, category = parent folder). "
        "Each product listed gets exactly the images listed for it; re-running with the same rows changes nothing."))
    p.add_argument("catalogue", metavar="CATALOGUE", help="catalogue CSV file or folder of product photos")
    p.add_argument("--store", required=True, metavar="DIR", help="store folder (created if absent), or milvus://HOST:PORT/NAME, milvus-lite:PATH.db")
    p.add_argument("--json", action="store_true", help="print the indexing report as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--domain", choices=["apparel", "other_product"], help=(
        "domain of every product whose row names none (default: inferred; a category's products all go "
        "where the majority of their photos' predicted intents point)"))
    p.add_argument("--device", default="cpu", metavar="DEVICE", help=(
        "where the backbone passes run: cpu (default: the configured runtime, OpenVINO), cuda or cuda:N "
        "(eager PyTorch on that GPU), auto (cuda where torch sees a GPU, else cpu); not saved with the store"))
    _add_config_options(p)
    _add_model_options(p)
    p.set_defaults(func=cmd_index)


def _add_search_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("search", help="search the catalogue with photos", description=(
        "Run the whole pipeline (intent gate, garment detection, per-region embedding, index search, rank "
        "filter, category entropy filter, category-aware ordering) on each image."))
    p.add_argument("images", nargs="*", metavar="IMAGE", help="photo(s) to search with")
    p.add_argument("--store", required=True, metavar="DIR", help="store folder made by 'shoplens index'")
    p.add_argument("--json", action="store_true", help="one JSON object per line per image (schema: docs/method.md)")
    p.add_argument("--text", action="append", default=[], metavar="WORDS", help=(
        "search with words instead of a photo, e.g. --text 'red rain jacket' (repeatable; one result per text, "
        "after the photos'); needs a CLIP or SigLIP backbone (embed.DOMAIN.backbone, docs/models.md)"))
    p.add_argument("--filter", action="append", default=[], metavar="FIELD_OP_VALUE", help=(
        "only products whose metadata pass (repeatable; all must hold), applied inside the index search: "
        "category=Juice, category=Juice|Milk, brand!=Acme, price<=20, price>5, title~apple (contains)"))
    p.add_argument("--domain", choices=["apparel", "other_product"], help=(
        "search every photo in this product domain, whatever the intent gate says (a photo it would stop as "
        "non_product too); the result keeps the classifier's predicted_intent"))
    p.add_argument("--box", metavar="X0,Y0,X1,Y1", help=(
        "search only this region of each photo (pixels of the photo as given, x1 and y1 exclusive), as a photo of "
        "its own, intent gate included; the result's steps.crop says which box was searched"))
    _add_config_options(p)
    _add_model_options(p)
    _add_search_options(p)
    p.set_defaults(func=cmd_search)


def _add_classify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("classify", help="intent of photos (apparel, other_product, non_product), no index needed")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--store", metavar="DIR", help="use the store's trained intent classifier, if it has one")
    p.add_argument("--json", action="store_true", help='one {"image", "intent", "intent_scores"} object per line')
    _add_config_options(p)
    _add_model_options(p)
    p.set_defaults(func=cmd_classify)


def _add_detect_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("detect", help="garments in photos (boxes and labels), no index needed")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--store", metavar="DIR", help="use the store's configuration")
    p.add_argument("--json", action="store_true", help='one {"image", "garments": [{"box", "label", "score"}]} object per line')
    _add_config_options(p)
    _add_model_options(p)
    p.set_defaults(func=cmd_detect)


def _add_migrate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("migrate", help="move a catalogue between stores or engines (embedded folder, Milvus)", description=(
        "Copy every product, image (raw descriptor), trained model and the saved configuration from SOURCE to a new "
        "or empty TARGET, then verify the counts. A store location is a folder (embedded engine), "
        "milvus://HOST:PORT/NAME (a Milvus cluster) or milvus-lite:PATH.db[#NAME] (Milvus Lite)."))
    p.add_argument("source", metavar="SOURCE", help="the store to copy from")
    p.add_argument("target", metavar="TARGET", help="the store to copy into (new or empty)")
    p.add_argument("--json", action="store_true", help="print the migration report as one JSON object")
    p.set_defaults(func=cmd_migrate)


def _add_models_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list the registered backbones, intent classifiers and detectors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)


def _add_config_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config", help="print the resolved configuration",
        epilog="options (--set KEY=VALUE; docs/configuration.md says what each does):\n" + options_summary(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", metavar="DIR", help="include the configuration saved in this store")
    _add_config_options(p)
    _add_model_options(p)
    _add_search_options(p)
    p.set_defaults(func=cmd_config)


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="index a public sample catalogue (Grocery Store Dataset, MIT) and search it", description=(
        "Download the Grocery Store Dataset once (checksum verified, cached), or read an offline copy with --from, "
        "index its 81 products into --store, search four store photos, adapt the search to the sample's labelled store "
        "photos (the head alone, about a minute; see --adapt) and search them again, saying where each photo's product came."))
    p.add_argument("--from", dest="source", metavar="DIR", help="offline copy: upstream layout, or a folder with catalog.csv (e.g. ../shared/data/grocery)")
    p.add_argument("--store", default="shoplens-demo-store", metavar="DIR", help="store folder (default ./shoplens-demo-store)")
    p.add_argument("--url", help="download from this URL instead of the pinned upstream archive")
    p.add_argument("--sha256", help="expected SHA-256 of the download")
    p.add_argument("--adapt", nargs="?", const="full", default="head", choices=("head", "full", "none"), help=(
        "adapt the search to the sample's labelled train store photos after a first, untrained search, as "
        "'shoplens train-embedder --labelled' would with a shop's own: 'head' (default; the head alone, about a "
        "minute on 2 cores: R@1 on the held-out store photos 0.47 -> 0.86), 'full' (also the backbone's last stage, "
        "about 5 minutes: 0.89; plain --adapt), 'none' (the untrained search only)"))
    p.add_argument("--json", action="store_true", help="search results as JSON lines")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="photos to search with (default: a few store photos of the sample)")
    _add_config_options(p)
    _add_model_options(p)
    _add_search_options(p)
    p.set_defaults(func=cmd_demo)


def _add_train_intent_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train-intent", help="train the intent classifier from labelled photos (step 7 of docs/method.md)", description=(
        "LABELLED is a folder with apparel/, other_product/ and non_product/ subfolders, or a CSV with columns image, intent. "
        "A head is trained on the bundled backbone's features, its accuracy is reported on a held-out part, and the store "
        "uses it from then on."))
    p.add_argument("labelled", metavar="LABELLED", help="labelled folders or CSV")
    p.add_argument("--store", required=True, metavar="DIR", help="store that will use the classifier (created if absent)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction held out to measure accuracy (default 0.2; 0: train on all)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split and training")
    p.add_argument("--json", action="store_true", help="print the training report as one JSON object")
    _add_config_options(p)
    p.set_defaults(func=cmd_train_intent)


def _add_train_embedder_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train-embedder", help="adapt the recognition models to the catalogue (step 8 of docs/method.md)", description=(
        "Tunes each domain's backbone stage (the stride-32 blocks) on the catalogue photos, read again from their sources, "
        "and re-encodes the stored images through it; then trains the domain's projection head on the stored raw "
        "descriptors. Both learn the catalogue's own labels: product ids where a product has several photos (add them "
        "with --labelled), else categories. Reports a held-out check, calibrates the rank filter on the held-out labelled "
        "photos (on synthetic views of the catalogue without them), raises the intent gate's stop_score where it would stop "
        "more than 1 in 200 labelled photos, saves the models in the store and re-projects its vectors."))
    p.add_argument("--store", required=True, metavar="DIR", help="indexed store to adapt")
    p.add_argument("--labelled", metavar="CSV", help="extra photos of catalogue products: CSV with columns image, product_id")
    p.add_argument("--domain", action="append", choices=["apparel", "other_product"], help="train only this domain (repeatable)")
    p.add_argument("--holdout", type=float, default=0.15, help="share of the labelled photos held out for the check and calibration (default 0.15; 0: none)")
    p.add_argument("--precision", type=float, default=None, help=(
        "precision of the returned set (same product) the default min_rank stands for (default: the store's search.target_precision)"))
    p.add_argument("--seed", type=int, default=0, help="random seed of the training")
    p.add_argument("--no-tune-backbone", action="store_true", help=(
        "train the head only, on the stored descriptors (seconds instead of minutes; no catalogue photo is read)"))
    p.add_argument("--json", action="store_true", help="print the reports as one JSON object")
    _add_config_options(p)
    p.set_defaults(func=cmd_train_embedder)


def _add_train_detector_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train-detector", help="train the garment detector on boxed outfit photos", description=(
        "OUTFITS_DIR holds garments.jsonl (one line per photo: image, garments with label and box) and the photos. "
        "Heads on the frozen efficientnet_lite0 maps are trained on three quarters of the photos (a hash of the file "
        "name picks them) and scored on the rest."))
    p.add_argument("outfits", metavar="OUTFITS_DIR", help="folder with garments.jsonl and the photos")
    p.add_argument("--out", required=True, metavar="FILE", help="weights file to write (use as detector head:FILE)")
    p.add_argument("--seed", type=int, default=0, help="random seed of training (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every ensemble member (default: the shipped recipe)")
    p.add_argument("--device", default="cpu", help="torch device to train on: cpu (default, deterministic) or cuda")
    p.add_argument("--json", action="store_true", help="print the training report as one JSON object")
    p.set_defaults(func=cmd_train_detector)


def _add_eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="measure search quality on labelled query photos (Recall@K, mAP, returned-set precision, intent, time)", description=(
        "QUERIES is a CSV with an 'image' column (relative to the CSV) and labels: product_id, category and/or intent. "
        "Every query is searched as configured; the report gives Recall@K, mAP, precision and recall of the returned set, "
        "the intent confusion matrix and time per step, and --report writes an HTML page with plots."))
    p.add_argument("queries", metavar="QUERIES", help="labelled queries CSV")
    p.add_argument("--store", required=True, metavar="DIR", help="store to search (with --catalogue: created and indexed first)")
    p.add_argument("--catalogue", metavar="CATALOGUE", help="index this catalogue into the store first")
    p.add_argument("--only", action="append", metavar="COLUMN=VALUE", help="keep only query rows with this value, e.g. --only split=val (repeatable)")
    p.add_argument("-k", type=int, nargs="+", default=[1, 5, 10], help="K values of Recall@K (default 1 5 10)")
    p.add_argument("--report", metavar="HTML", help="write an HTML report with plots (needs the [eval] extra)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    _add_config_options(p)
    _add_model_options(p)
    _add_search_options(p)
    p.set_defaults(func=cmd_eval)


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve search, catalogue writes and a web page over HTTP", description=(
        "Serve the store over HTTP: POST /search with a photo (the search object of docs/method.md, as JSON), product add / update / "
        "delete (needs the API key), GET /products, /images/ID, /healthz, /readyz, /metrics, the OpenAPI schema at "
        "/openapi.json and a web page at /. Needs: pip install 'shoplens[server]'."))
    p.add_argument("--store", required=True, metavar="DIR", help="store folder made by 'shoplens index' (see --create)")
    p.add_argument("--create", action="store_true", help="create an empty store if DIR has none (to fill it through the API)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key-file", metavar="FILE", help="file holding the API key for write endpoints (default: $SHOPLENS_API_KEY; with neither, writes answer 403)")
    p.add_argument("--read-key-file", metavar="FILE", help=(
        "file holding a key that search, product reads, photos and /metrics then need, or the write key "
        "(default: $SHOPLENS_READ_KEY; with neither, they are open; health, readiness and the web page always are)"))
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", help="allow browser calls from this origin, e.g. https://shop.example (repeatable)")
    p.add_argument("--allow-url", action="append", default=[], metavar="PREFIX", help="let POST /search/url fetch photos under this URL prefix (repeatable; default: never fetch)")
    p.add_argument("--max-upload-mb", type=float, metavar="MB", help="largest photo accepted (default 20)")
    p.add_argument("--max-pixels", type=int, metavar="N", help="largest decoded photo in pixels (default 40000000)")
    p.add_argument("--max-decoded-mb", type=float, metavar="MB", help=(
        "the most one photo's decode may hold: the image as decoded plus the RGB photo it becomes (default 128)"))
    p.add_argument("--search-concurrency", type=int, metavar="N", help="searches run at once; more wait their turn (default 2)")
    p.add_argument("--persist-interval", type=float, metavar="S", help=(
        "save the vector indexes this often, in seconds, when the catalogue changed (default 300; and at shutdown). "
        "Every acknowledged write is durable in SQLite at once; a restart replays what the saved indexes miss"))
    p.add_argument("--card-fields", metavar="F1,F2", help=(
        "product metadata fields the web page's result cards show under the title, e.g. price,url "
        "(a value that is an http(s) URL becomes a link; default: none)"))
    p.add_argument("--max-batch-photos", type=int, metavar="N", help="most photos one POST /search/batch may carry (default 16)")
    p.add_argument("--import-root", metavar="DIR", help=(
        "the folder whose photos a catalogue sent to POST /imports may name (symlinks and '..' resolved; paths outside "
        "are refused); default: none, imports may name only --allow-url URLs"))
    _add_config_options(p)
    _add_model_options(p)
    _add_search_options(p)
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoplens",
        description="Search a shop's own product catalogue with a photo.",
        epilog="Run 'shoplens COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"shoplens {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_index_parser(sub)
    _add_search_parser(sub)
    _add_classify_parser(sub)
    _add_detect_parser(sub)
    _add_migrate_parser(sub)
    _add_models_parser(sub)
    _add_config_parser(sub)
    _add_demo_parser(sub)
    _add_train_intent_parser(sub)
    _add_train_embedder_parser(sub)
    _add_train_detector_parser(sub)
    _add_eval_parser(sub)
    _add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # A model's first export takes seconds: say so whatever the verbosity (shoplens.models.onnx_runtime).
    prepare = logging.getLogger("shoplens.prepare")
    notice = logging.StreamHandler(sys.stderr)
    notice.setFormatter(logging.Formatter("shoplens: %(message)s"))
    prepare.addHandler(notice)
    prepare.setLevel(logging.INFO)
    prepare.propagate = False
    try:
        return int(args.func(args))
    except ShoplensError as err:
        sys.stderr.write(f"shoplens: error: {err}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("shoplens: interrupted\n")
        return 130
    finally:
        prepare.removeHandler(notice)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
