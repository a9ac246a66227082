"""Configuration in layers: defaults < file < flags.

Every setting is a dataclass field with a default, and its metadata is the one
description of it: the help text, the allowed values (a ``Literal`` type) and
numeric bounds. The docs/configuration.md table and ``shoplens config --help``
are generated from it (``python -m shoplens.config --markdown``).

A JSON or TOML file overrides some settings; command-line flags or keyword
arguments override the file. ``None`` never overrides anything, so "not given"
stays "not given". A value of the wrong type, outside its bounds or not among
the allowed ones is a :class:`~shoplens.errors.ConfigError` naming the option.
The resolved configuration is saved next to the index it built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from .errors import ConfigError

INTENTS = ("apparel", "other_product", "non_product")
DOMAINS = ("apparel", "other_product")


def setting(
    default: Any,
    *,
    help: str,
    ge: float | None = None,
    le: float | None = None,
    check: Callable[[Any], bool] | None = None,
    expected: str = "",
) -> Any:
    """A configuration field: its default, help text and bounds (``ge`` ≤ value ≤ ``le``).

    ``check`` accepts or refuses a value the type alone cannot judge;
    ``expected`` then says what it wants. Allowed values come from the field's
    ``Literal[...]`` type.
    """
    return field(default=default, metadata={"help": help, "ge": ge, "le": le, "check": check, "expected": expected})


def _input_sizes(value: str) -> bool:
    tokens = value.replace(",", " ").split()
    return all(t.isdigit() and int(t) > 0 for t in tokens)


@dataclass
class IntentConfig:
    """Step 1: the intent gate."""

    enabled: bool = setting(True, help="step 1, the intent gate; off: no photo is stopped, each goes to its likelier product domain")
    #: The name of a registered intent classifier (``shoplens models``), so not a closed list.
    classifier: str = setting("auto", help=(
        "`auto` (the store's trained classifier if `shoplens train-intent` made one, else `default-head`), "
        "`default-head` (the shipped head over `imagenet-map`), `imagenet-map`, `trained`"
    ))
    backbone: str = setting("efficientnet_lite0", help="backbone the default classifier reads")
    stop_score: float = setting(0.9, ge=0.0, le=1.0, help=(
        "a photo is stopped as `non_product` only when its `non_product` score is at least this; one the "
        "classifier leans to `non_product` with less is searched in its likelier product domain, and "
        "`steps.intent` says `uncertain: true` and `predicted: non_product`. A false stop loses a sale; a "
        "wasted search costs milliseconds, and the calibrated rank filter gives such a photo a short or empty "
        "list. 0.9 is the smallest score that keeps 98 % of the shared grocery *train* photos (97.3 % at 0.8, "
        "93.6 % by argmax); it stops 69–100 % of the generated negatives per kind (docs/decisions.md). "
        "`train-embedder --labelled` raises a store's value (up to 0.99) until at most 1 in 200 of its "
        "labelled photos would be stopped, and says so. 0.5 or less: the classifier's argmax"
    ))
    second_domain_share: float = setting(0.1, ge=0.0, help=(
        "also search the other product domain's partition (the whole photo, global embedding, as one more "
        "region whose `domain` says which) when that domain has at least this share of the two product "
        "scores, or the photo leans to `non_product` without being stopped; `steps.second_domain` reports it. "
        "0.1: a second search for 10 % of clothing photos, 18 % of outfits, 4 % of grocery photos, reaching "
        "about half of those the gate sends to the wrong partition (docs/benchmarks.md, section 2). Above "
        "0.5: only for photos leaning to `non_product`. Not with a `--domain` override"
    ))
    preview_decode: bool = setting(True, help=(
        "a search decodes a large JPEG first only as small as the gate reads it (JPEG draft mode), and again "
        "in full only when the gate passes it: a non-product photo costs 1.3–5.7 ms less (640–2,560 px), a "
        "product photo pays a second, smaller decode (0.4 ms at 700 px, 2–6 ms at 1,400–2,800 px; "
        'docs/benchmarks.md, "Large JPEGs"). Off (and with the gate off, which stops nothing): every photo is '
        "decoded once, in full — for a shop whose uploads are nearly all large product photos"
    ))


@dataclass
class DetectConfig:
    """Step 2 for apparel: find every garment."""

    enabled: bool = setting(True, help="step 2 for apparel: find every garment; off: the whole photo is searched")
    detector: str = setting("default", help=(
        "garment detector: `default` (the shipped head on efficientnet_lite0 maps), `head:PATH` (weights from "
        "`shoplens train-detector`), `owlv2-base` / `owlv2:…` ([hf] extra), `none` (search the whole photo); "
        "`shoplens models` lists them"
    ))
    min_score: float = setting(0.05, ge=0.0, le=1.0, help=(
        "boxes under this confidence are ignored (0.05: recall 0.80 at 7.7 boxes per photo; 0.3: 0.70 at "
        "fewer boxes — docs/benchmarks/detect.md)"
    ))
    max_garments: int = setting(8, ge=1, help="at most this many regions per photo")
    #: With ``region_iou`` and ``whole_photo_area``: 7.8 -> 5.1 regions per held-out outfit photo at
    #: 0.83 of the garments covered (0.85 before), 6.0 -> 1.5 per single-garment photo
    #: (docs/benchmarks.md section 3, docs/decisions.md).
    search_min_score: float = setting(0.15, ge=0.0, le=1.0, help=(
        "an apparel search embeds only boxes of at least this score (`shoplens detect` reports all above "
        "`detect.min_score`); the best box is searched when none passes"
    ))
    region_iou: float = setting(0.8, ge=0.0, help=(
        "a box overlapping a better one of any label with IoU at least this is not searched (the same crop, "
        "the same list)"
    ))
    whole_photo_area: float = setting(0.25, ge=0.0, help=(
        "when the best garment covers at least this share of the photo and every other region lies mostly "
        "inside it, the whole photo is the one region (a garment laid flat: 6.0 → 1.5 regions per clothing "
        "photo; outfits 7.8 → 5.1 at 0.83 of garments covered, docs/benchmarks.md section 3); above 1: never"
    ))
    whole_image: bool = setting(False, help="also search the whole photo as one more region")


@dataclass
class DomainModelConfig:
    """A recognition model: a backbone and the input size it is fed at."""

    backbone: str = setting("efficientnet_lite0", help="recognition model of each domain")
    input_size: int = setting(224, ge=1, help="longest side of the model input")
    #: A registered pooling (``shoplens.embed.list_poolings()``), so not a closed list.
    pooling: str = setting("rmac-s32", help="pooling of the stride-32 map: `rmac-s32` (R-MAC regions), `gem3-s32`, `avg-s32`")
    #: A string, as stores have always saved it ("320", "" for none).
    extra_sizes: str = setting(
        "", check=_input_sizes, expected='input sizes in pixels separated by commas or spaces ("320", "288,320"), or "" for none',
        help="more input sizes whose descriptors are concatenated (multi-scale)",
    )
    colour: float = setting(0.0, ge=0.0, help=(
        "weight of the photo's HSV colour histogram appended to the descriptor (0: none); changing it needs a "
        "re-index. Stores saved before the option keep 0"
    ))


@dataclass
class EmbedConfig:
    """Step 2: one recognition model per domain."""

    # Garment crops: GeM at 224 px (per-garment search served 0.285 of garments vs 0.268 with
    # R-MAC, same run; docs/benchmarks.md).
    apparel: DomainModelConfig = field(default_factory=lambda: DomainModelConfig(pooling="gem3-s32"))
    # Packaged goods and produce: R-MAC at 224 and 320 px (docs/benchmarks/embedq.md) and the
    # colour histogram (R@1 after train-embedder +0.03-0.05, docs/benchmarks.md section 4).
    other_product: DomainModelConfig = field(default_factory=lambda: DomainModelConfig(extra_sizes="320", colour=0.7))


@dataclass
class SearchConfig:
    """Steps 3-6: similar set, rank filter, entropy filter, ordering."""

    similar_k: int = setting(50, ge=1, help="cap of the similar set fetched from the index (step 3)")
    max_distance: float = setting(2.0, ge=0.0, help="neighbours farther than this are not similar (step 3)")
    rank_filter: bool = setting(True, help="step 4 on/off")
    min_rank: float = setting(1.08, help=(
        "step 4 threshold (calibrated distance ≤ 0.92). Distances are calibrated per store "
        "(`search.calibration`), so that 1.08 keeps hits at the calibration's stated precision: "
        "`search.target_precision` (same product), fitted at index time on synthetic views, by "
        "`train-embedder` on held-out labelled photos"
    ))
    calibration: Literal["auto", "off"] = setting("auto", help=(
        "how step 4's distances are calibrated. `auto`: the store's calibration. `shoplens index` fits one "
        "per product domain without labels, on synthetic shopper's photos made from 160 of the catalogue's "
        "photos (a crop at a slant on a mosaic of other catalogue photos, other light, blur, JPEG; several "
        "photos of one product stand for each other): a hit's calibrated distance is `0.92 + (distance − "
        "background) − t_c`, where the background is the median distance of the query's 11th to 50th products "
        "and `t_c` the category's margin at the target precision, shrunk to the domain's. A shopper's photo "
        "lands farther from every catalogue image than the catalogue's own photos do; its margin over that "
        "background carries over from synthetic to real photos where the raw distance does not "
        "(docs/decisions.md). Fitted again when the domain's image count changed by a tenth (`shoplens serve`: in the "
        "background, after the write); `train-embedder` "
        "replaces it with one fitted on labelled photos, which indexing never replaces. Before a store's "
        "first fit, hits must be 0.05 nearer than the background. `off`: raw distances, as in the plain method (on an "
        "untrained store most lists come back empty). With the rank filter off, distances are raw either way. "
        "Every hit reports `precision`, the share of relevant hits at its calibrated rank in the fit"
    ))
    target_precision: float = setting(0.06, ge=0.0, le=1.0, help=(
        "the precision of the returned similar set (same product) that the default `min_rank` stands for in "
        "the calibration fitted at index time and by `train-embedder` (unless given `--precision`); set "
        "before indexing. An untrained embedding barely separates a shopper's photo of the product from its "
        "neighbours, so a strict target costs recall: on the grocery train photos 0.04 / 0.06 / 0.08 / 0.10 "
        "returned R@10 0.832 / 0.818 / 0.762 / 0.718, and lists of 9.9 / 4.6 / 1.9 / 1.1 products for photos "
        "of things the shop does not sell (docs/benchmarks.md section 1)"
    ))
    entropy_filter: bool = setting(True, help="step 5 on/off")
    max_entropy_bits: float = setting(3.0, ge=0.0, help=(
        "step 5 threshold. A category is weighed against what it could hold: `H_c = −log2(n_c / min(N, "
        "size_c))` with `size_c` its products in the domain (the plain `−log2(n_c / N)` for categories of N products or "
        "more), so a category of 2 products with both in the set is not uncertain; when no category is within "
        "the limit, nothing is dropped"
    ))
    category_order: bool = setting(True, help="step 6 on/off (off: order by rank)")
    #: 0.02 groups 1.7x as many neighbours by category as rank order at the same R@5 on the
    #: grocery train photos (docs/decisions.md).
    order_tolerance: float = setting(0.02, ge=0.0, help=(
        "step 6 moves a hit before a better-ranked one of a higher-scoring category (S_c) only when their "
        "ranks differ by less than this: categories break near-ties in rank, never a clear difference. 2: "
        "the plain ordering of docs/method.md (on the grocery train photos it cost 0.04 of R@5: a large category pushed the "
        "right product down); 0: rank order"
    ))
    top_k: int = setting(10, ge=1, help="cap of each returned list (`--top-k`)")


@dataclass
class LocalFeaturesConfig:
    """Local features for ``other_product`` (printed labels, packages): their own index, fused with the global one.

    Each candidate's distance becomes ``global distance × exp(−weight × ASMK score)``
    (ASMK scores are comparable across queries, so the result stays a distance
    in 0 … 2 that the rank filter can threshold); with ``verify``, the
    ``shortlist`` closest are checked geometrically and those with
    ``min_inliers`` RANSAC inliers or more come closer by the fraction ``verified_bonus``.
    """

    enabled: bool = setting(True, help=(
        "local features for `other_product` (SIFT visual words scored by ASMK, fused with the global "
        "distances, RANSAC-verified; docs/benchmarks.md section 4); `--no-local-features`"
    ))
    weight: float = setting(
        8.0, ge=0.0, help="fusion weight: a candidate's distance becomes `global distance × exp(−weight × ASMK score)`",
    )
    scope: Literal["auto", "candidates", "all"] = setting("auto", help=(
        "which catalogue images the query's visual words are scored against: `candidates`, the global "
        "search's candidates only (about 200 images; the query's cost, visual words included, hardly grows "
        "with the catalogue: 11 ms at 2,000 store photos and at 100,000), `all`, every indexed image, which "
        "may add up to `local.candidates` images the global search missed, at a cost linear in the catalogue "
        "(20 ms at 2,000 store photos, 64 ms at 10,000, 158 ms at 30,000, 529 ms at 100,000; "
        "`benchmarks/local_scale.py`, docs/benchmarks.md section 5), or `auto`: `all` while the local index "
        "holds at most `local.all_up_to` (5,000) images, `candidates` above. Printed labels of one design in "
        "many variants look alike to the global embedding, so its candidates often miss the right one: 130 "
        "generated labels among 2,000 look-alikes, R@1 0.18 with `candidates`, 0.95 with `all` "
        "(`benchmarks/labels.py`, docs/benchmarks.md section 5). The grocery photos: R@1 0.453 / 0.456 "
        "(`candidates` / `all`, against 81 images)"
    ))
    all_up_to: int = setting(
        5000, ge=0, help="with `local.scope` `auto`: `all` while the local index holds at most this many images, `candidates` above",
    )
    candidates: int = setting(
        100, ge=0, help="with scope `all`: images the local index adds per query, besides the global search's candidates",
    )
    verify: bool = setting(
        True,
        help=(
            "check the shortlisted candidates geometrically (RANSAC); off (`--no-verify`): local features are "
            "fused without verification (faster)"
        ),
    )
    shortlist: int = setting(10, ge=0, help="how many of the best fused candidates are verified")
    local_shortlist: int = setting(10, ge=0, help=(
        "candidates verified besides the `local.shortlist` best fused ones: the best by local score alone (a "
        "label the global embedding cannot place still reaches verification). Verified candidates "
        "(`local.min_inliers` or more) then hold their distances in order of inlier count: a label's "
        "look-alike variants verify too (about 40 inliers from the shared band and emblem, against about 90 "
        "from the label itself)"
    ))
    min_inliers: int = setting(15, ge=0, help="RANSAC inliers that count as verified")
    verified_bonus: float = setting(
        0.3, ge=0.0, le=1.0, help="a verified candidate's distance comes closer by this fraction",
    )
    max_side: int = setting(512, ge=1, help="longest side photos are shrunk to before SIFT (needs a re-index)")
    max_keypoints: int = setting(1000, ge=1, help="SIFT keypoints kept per image (needs a re-index)")
    query_max_side: int = setting(384, ge=0, help=(
        "longest side a *query* photo is shrunk to before SIFT (0: `local.max_side`); a search-time setting (no re-index). The "
        "default leaves photos of 384 px or less alone and takes SIFT on a large upload from 55 to 37–41 ms; "
        "sharp synthetic labels keep a median of 68 RANSAC inliers (131 at 512 px, min 37; 15 verify), and a "
        "wrong label's best falls from 16 to 10 (docs/decisions.md). On small, soft phone photos (the 348-px "
        "grocery store photos) 224 finds as many products as the full size in about 0.6 of the local step's "
        "time (R@1 0.441 → 0.447 over 2,640 queries, local step 37–41 → 20–23 ms at 100k products); on sharp, "
        "finely printed labels it costs most of the RANSAC inliers (median 131 → 24 on the test suite's "
        "synthetic labels), so 224 is not the default (docs/decisions.md)"
    ))
    skip_margin: float = setting(0.03, ge=0.0, help=(
        "skip the local step when the second-closest product's global distance exceeds the closest one's by "
        "at least this much (the global answer is clear); 0: always run it. Skips 32 % of untrained and 85 % "
        "of trained grocery searches at no R@1 loss (docs/benchmarks/lat.md, docs/decisions.md)"
    ))
    skip_produce: float = setting(0.1, ge=0.0, le=1.0, help=(
        "skip the local step when the intent gate's ImageNet classes (already computed) put at least this "
        "probability on loose fresh produce: fruit, vegetables, corn, edible fungi (27 classes, "
        "`shoplens.intent.PRODUCE_CLASSES`); 0: never. One apple looks like the next and nothing on it is "
        "printed, so local features barely tell such products apart. Skips 58–62 % of the grocery store "
        "photos (88–92 % of fruit and vegetables, 1 package in 964), at R@1 0.441 → 0.442 (2,640 photos) and "
        "0.453 → 0.443 (296) against the catalogue images, 0.672 → 0.659 against a catalogue that also holds "
        "store photos of the same shelves; other_product p50 at 100k products 55–58 → 23–30 ms "
        "(docs/benchmarks.md, section 5; docs/decisions.md). A search that runs the step takes what it took: "
        "a shop of printed goods only gains nothing from it"
    ))


@dataclass
class StoreConfig:
    """The store engine and its vector index.

    The store location picks the engine (a folder: ``embedded``;
    ``milvus://HOST:PORT/NAME`` or ``milvus-lite:PATH.db``: ``milvus``).
    """

    engine: Literal["auto", "embedded", "milvus"] = setting(
        "auto",
        help=(
            "store engine: `auto` (whatever the store location says: a folder is `embedded`, "
            "`milvus://HOST:PORT/NAME` or `milvus-lite:PATH.db` is `milvus`), or `embedded` / `milvus` to insist on one"
        ),
    )
    index: Literal["auto", "flat", "ivfflat", "ivfsq8", "ivfpq", "hnsw"] = setting(
        "auto",
        help=(
            "vector index kind: `auto` (exact while small, approximate when large), `flat`, `ivfflat`, `ivfsq8`, "
            "`ivfpq`; Milvus also takes `hnsw` (`auto` is Milvus's AUTOINDEX)"
        ),
    )


@dataclass
class RuntimeConfig:
    """How the backbones run on the CPU."""

    engine: Literal["auto", "torch", "onnx", "openvino"] = setting("auto", help=(
        "how the backbones run: `auto` (OpenVINO for the convolutional backbones; ONNX Runtime where OpenVINO "
        "is missing or cannot compile the graph; PyTorch for the other backbones or when neither runs, each "
        "fallback with a log line), `openvino` (OpenVINO in f32, convolutional backbones only; an error "
        "otherwise), `onnx` (ONNX Runtime, the same), `torch` (eager PyTorch, batch norms folded, "
        "channels-last). The model is exported to ONNX once into `$SHOPLENS_CACHE/onnx` (default "
        "`~/.cache/shoplens/onnx`) and both runtimes run that graph (OpenVINO keeps its compiled form in "
        "`$SHOPLENS_CACHE/openvino`, about 18 MB a model, which makes a later start 0.2 s faster per model); "
        "encodings equal PyTorch's to 1e-4 whichever runs them, so a store needs no re-embedding when the "
        "runtime changes. Forward pass on the 2-core reference machine: OpenVINO 6–7× eager torch, about 1.5× "
        "ONNX Runtime (1.3–1.8× over the runs of docs/benchmarks.md, section 5). A searching process holds "
        "80–120 MiB more with OpenVINO (its compiled model and the kernels it keeps for each input shape met: "
        "266 against 113 MiB for Lite0 over a search stream's 37 shapes), plus the compilations of "
        "`runtime.static_shapes`; `onnx` where memory is tighter than time"
    ))
    threads: int = setting(0, ge=0, help=(
        "CPU threads for inference; 0: the runtime's default (all cores). With `torch` it sets the "
        "process-wide `torch.set_num_threads`"
    ))
    streams: int = setting(0, ge=0, help=(
        "OpenVINO passes that run at once, each on its share of `runtime.threads` (all cores when 0). 0: one "
        "per search `shoplens serve` runs at once (`--search-concurrency N`: N streams, at most one per "
        "thread: 2 streams of 1 thread on 2 cores), one for every other command and for the Python API "
        "(`Shoplens(search_concurrency=N)` asks for N), which runs one search at a time over all the threads. "
        "Two searches on one stream each contend for both threads in every layer; side by side they cost less "
        "CPU each (8 clients, 81 products, 2 cores: server CPU 75–84 against 88–92 ms a search with one stream; "
        "docs/benchmarks.md section 7). Streams of a server are not pinned to cores, which its other threads "
        "share. The outputs are the same whatever the streams, bit for bit; indexing batches always run on one "
        "stream; other runtimes ignore the setting"
    ))
    precision: Literal["f32", "bf16"] = setting("f32", help=(
        "`bf16`: OpenVINO computes the backbones in bfloat16 on CPUs that have it (AMX or AVX512-BF16; "
        "elsewhere f32, with a log line); `torch` and `onnx` refuse it, `auto` without OpenVINO falls back to "
        "f32 with a warning. Measured on the reference CPU: forward pass 1.7–1.9× f32 at batch 32 (indexing), "
        "1.3–1.7× for one photo; grocery R@1 −0.007 (untrained) / −0.010 (trained), 0–4 of ~300 intent "
        "decisions changed per kind, garment recall unchanged (docs/benchmarks.md, section 5). Saved with the "
        "store like every setting; a store indexed in one precision and searched in the other loses no more "
        "than that"
    ))
    malloc_trim_mib: int = setting(64, ge=0, help=(
        "MiB of freed memory a process keeps for its next search rather than handing it back to the kernel "
        "(glibc's `M_TRIM_THRESHOLD`; blocks up to 32 MiB also stay on the heap, `M_MMAP_THRESHOLD`). glibc's "
        "own thresholds start at 128 KiB and move with the process's history, so SIFT's scale space (~24 MB "
        "for a 348-px query) was often given back after each search and faulted in again, page by page: about "
        "6,100 page faults and 10 ms per query. Measured side by side (search benchmark, 100k products): "
        "other_product p50 72–79 → 63–64 ms, RSS +20 MiB; 2 or 4 threads searching at once: RSS within ±50 "
        "MiB either way (docs/decisions.md). Process-wide, set when a store is opened; 0 leaves the C "
        "library's thresholds; a malloc setting in the environment (`GLIBC_TUNABLES`, "
        "`MALLOC_TRIM_THRESHOLD_`) wins; nothing is done on other C libraries"
    ))
    static_shapes: int = setting(6, ge=0, help=(
        "how many single-photo input shapes OpenVINO compiles on their own. The general compilation takes any "
        "input size, and OpenVINO re-plans every layer when a pass's size differs from the last one's; a "
        "search stream alternates sizes (the gate's 224-px pass, the 320-px descriptor, the detector, garment "
        "crops), so most passes paid for it: about 1.2 ms of a 224-px pass (4.8 → 3.6 ms in a mixed stream). "
        "The most frequent recent shapes (counted per pass, halved every 64 passes; a shape takes a promoted "
        "one's place when seen more than twice as often) are compiled in the background, up to this many; the "
        "outputs are the same, bit for bit. Each costs 27–40 MiB with EfficientNet-Lite0 (its own packed "
        "weights and buffers). In the search benchmark (docs/benchmarks.md section 5; docs/decisions.md) six "
        "places hold every shape that recurs there: the product searches' four (the grocery photos' gate and "
        "320-px passes, the outfits' gate and detector passes) and the non-product photos' two gate shapes "
        "(128 × 224, 160 × 224): against 0, +230 MiB RSS, non_product p50 −0.6 to −1.2 ms (the gate's saving, "
        "non_product / apparel 0.091–0.097 against 0.103–0.105), other_product −2 to −3 ms, apparel −2 to −3 "
        "ms. At 4 the non-product shapes lost their places to the product searches' (+165 MiB, non_product / "
        "apparel 0.106–0.109); at 8 two garment-crop shapes took the extra places for +40 MiB more and no "
        "measurable gain. The places are per backbone: a store tuned by `train-embedder` runs a second one "
        "for its product descriptors, with places of its own (in the benchmark with a tuned stage, 6 + 2 "
        "shapes held, +333 MiB against 0: 1,440 against 1,107 MiB). 0: one compilation for every size; "
        "batches (indexing) always use it; other runtimes ignore the setting"
    ))


@dataclass
class Config:
    intent: IntentConfig = field(default_factory=IntentConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    local: LocalFeaturesConfig = field(default_factory=LocalFeaturesConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, overrides: Mapping[str, Any] | None) -> Config:
        """A copy with ``overrides`` (nested mapping) applied; ``None`` values are skipped."""
        return _merge(self, overrides or {}, "")

    def with_flags(self, **flags: Any) -> Config:
        """Apply dotted flags: ``with_flags(**{"search.min_rank": 1.2})``."""
        nested: dict[str, Any] = {}
        for key, value in flags.items():
            if value is None:
                continue
            node = nested
            parts = key.split(".")
            for i, part in enumerate(parts[:-1]):
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{'.'.join(parts[:i + 1])!r} is given a value and also {key!r}")
            node[parts[-1]] = value
        return self.merged(nested)


T = TypeVar("T")


def _merge(obj: T, overrides: Mapping[str, Any], where: str) -> T:
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where or 'configuration'}: expected a table, got {overrides!r}")
    known = {f.name: f for f in fields(obj)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"unknown configuration option {path!r}; known: {', '.join(sorted(known))}")
        if value is None:
            continue
        current = getattr(obj, key)
        if is_dataclass(current):
            changes[key] = _merge(current, value, path)
        else:
            changes[key] = _validate(known[key], _choices(type(obj)).get(key), _coerce(current, value, path), path)
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def _coerce(current: Any, value: Any, path: str) -> Any:
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if isinstance(current, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if math.isnan(number):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return number
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _validate(f: dataclasses.Field[Any], choices: tuple[str, ...] | None, value: Any, path: str) -> Any:
    """``value`` (already of the field's type) if its metadata allows it."""
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    ge, le = f.metadata.get("ge"), f.metadata.get("le")
    if (ge is not None and value < ge) or (le is not None and value > le):
        raise ConfigError(f"{path}: expected {'an integer' if isinstance(value, int) else 'a number'} {_bounds(ge, le)}, got {value!r}")
    check = f.metadata.get("check")
    if check is not None and not check(value):
        raise ConfigError(f"{path}: expected {f.metadata['expected']}, got {value!r}")
    return value


def _bounds(ge: float | None, le: float | None) -> str:
    if ge is not None and le is not None:
        return f"from {ge:g} to {le:g}"
    return f"of at least {ge:g}" if ge is not None else f"of at most {le:g}"


_CHOICES: dict[type, dict[str, tuple[str, ...]]] = {}


def _choices(cls: type) -> dict[str, tuple[str, ...]]:
    """The allowed values of each ``Literal``-typed field of a configuration section."""
    if cls not in _CHOICES:
        hints = typing.get_type_hints(cls)
        _CHOICES[cls] = {
            f.name: typing.get_args(hints[f.name]) for f in fields(cls) if typing.get_origin(hints[f.name]) is Literal
        }
    return _CHOICES[cls]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML configuration file into a nested mapping."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read configuration: {err.strerror or err}") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{p}: invalid configuration file: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the configuration must be a table of options")
    return data


#: Options added after stores were first saved, with the value a store saved
#: before them was made with (its stored descriptors depend on it).
_ADDED_SINCE: dict[tuple[str, ...], Any] = {
    ("embed", "other_product", "colour"): 0.0,
    ("embed", "apparel", "colour"): 0.0,
}


def load_store_config(path: str | Path) -> Config:
    """The configuration a store saved (``config.json``): options it predates keep their old values."""
    data = load_config_file(path)
    for keys, old in _ADDED_SINCE.items():
        node: Any = data
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] not in node:
            node[keys[-1]] = old
    return Config().merged(data)


def resolve_config(file: str | Path | None = None, base: Config | None = None, **flags: Any) -> Config:
    """Defaults (or ``base``) < ``file`` < ``flags`` (dotted names)."""
    config = base or Config()
    if file is not None:
        config = config.merged(load_config_file(file))
    return config.with_flags(**flags)


# -- the reference, generated from the fields ---------------------------------
@dataclass(frozen=True)
class Option:
    """One documented option: its dotted name (``embed.*.pooling`` for one per domain) and defaults."""

    name: str
    spec: dataclasses.Field[Any]
    #: The default, or one per domain (``{"apparel": ..., "other_product": ...}``) where they differ.
    default: Any
    choices: tuple[str, ...] | None

    @property
    def help(self) -> str:
        return str(self.spec.metadata["help"])


def options() -> Iterator[Option]:
    """Every option, in the order of the dataclasses; a section of like subsections (``embed``) as ``embed.*.NAME``."""
    defaults = Config()
    for section in fields(Config):
        value = getattr(defaults, section.name)
        subs = [getattr(value, f.name) for f in fields(value)]
        if subs and all(is_dataclass(s) and type(s) is type(subs[0]) for s in subs):
            names = [f.name for f in fields(value)]
            for f in fields(subs[0]):
                per = {n: getattr(s, f.name) for n, s in zip(names, subs)}
                first = per[names[0]]
                default = first if all(v == first for v in per.values()) else per
                yield Option(f"{section.name}.*.{f.name}", f, default, _choices(type(subs[0])).get(f.name))
        else:
            for f in fields(value):
                yield Option(f"{section.name}.{f.name}", f, getattr(value, f.name), _choices(type(value)).get(f.name))


def _literal(value: Any) -> str:
    """A default as the table shows it: ``true``, ``0.9``, ``auto``; a string that could be read as a number, quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and (not value or value.replace(",", "").replace(" ", "").isdigit()):
        return json.dumps(value)
    return str(value)


def _default_cell(option: Option) -> str:
    if isinstance(option.default, dict):
        return ", ".join(f"`{k}`: `{_literal(v)}`" for k, v in option.default.items())
    return f"`{_literal(option.default)}`"


def markdown_table() -> str:
    """The option table of docs/configuration.md."""
    lines = ["| option | default | meaning |", "|---|---|---|"]
    lines += [f"| `{o.name}` | {_default_cell(o)} | {o.help} |" for o in options()]
    return "\n".join(lines) + "\n"


def options_summary() -> str:
    """One line per option: name, default and allowed values (``shoplens config --help``)."""
    out = ["  (embed.*: embed.apparel and embed.other_product)"]
    for o in options():
        default = (", ".join(f"{k}: {_literal(v)}" for k, v in o.default.items())
                   if isinstance(o.default, dict) else _literal(o.default))
        allowed = ""
        if o.choices is not None:
            allowed = f"  {{{','.join(o.choices)}}}"
        elif o.spec.metadata.get("ge") is not None or o.spec.metadata.get("le") is not None:
            allowed = f"  ({_bounds(o.spec.metadata.get('ge'), o.spec.metadata.get('le')).removeprefix('of ')})"
        out.append(f"  {o.name} = {default}{allowed}")
    return "\n".join(out) + "\n"


#: The markers around the generated table in docs/configuration.md.
TABLE_BEGIN = "<!-- options: generated from src/shoplens/config.py by `python -m shoplens.config --markdown docs/configuration.md` -->"
TABLE_END = "<!-- end of options -->"


def with_markdown_table(text: str) -> str:
    """``text`` (docs/configuration.md) with the section between the markers replaced by :func:`markdown_table`."""
    head, sep, rest = text.partition(TABLE_BEGIN)
    _, sep2, tail = rest.partition(TABLE_END)
    if not sep or not sep2:
        raise ConfigError("the document has no generated-table markers")
    return f"{head}{TABLE_BEGIN}\n{markdown_table()}{TABLE_END}{tail}"


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 1 and argv[0] == "--markdown":
        sys.stdout.write(markdown_table())
        return 0
    if len(argv) == 2 and argv[0] == "--markdown":
        doc = Path(argv[1])
        doc.write_text(with_markdown_table(doc.read_text("utf-8")), "utf-8")
        return 0
    sys.stderr.write("usage: python -m shoplens.config --markdown [DOC]  (print the option table, or rewrite it in DOC)\n")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
