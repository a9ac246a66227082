"""Configuration in layers: defaults < file < flags.

Every setting is a dataclass field with a default. A JSON or TOML file
overrides some of them; command-line flags or keyword arguments override the
file. ``None`` never overrides anything, so "not given" stays "not given".
The resolved configuration is saved next to the index it built.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

INTENTS = ("apparel", "other_product", "non_product")
DOMAINS = ("apparel", "other_product")


@dataclass
class IntentConfig:
    """Step 1: the intent gate."""

    enabled: bool = True
    #: Classifier name: "imagenet-map" (pretrained default, no training) or
    #: "trained" (the one ``shoplens train-intent`` saved in the store).
    classifier: str = "auto"
    backbone: str = "efficientnet_lite0"
    #: A photo is stopped as non_product only when its non_product score is at least this; a photo
    #: the classifier leans to non_product with less is searched (``steps.intent.uncertain``): a
    #: false stop loses a sale, a wasted search costs milliseconds. 0.9: the smallest score that keeps
    #: 98 % of the grocery train photos (98.3 %; 97.3 % at 0.8, 93.6 % by argmax); it stops 69-100 %
    #: of the generated negatives per kind (docs/decisions.md). 0.5 or less: the classifier's argmax.
    stop_score: float = 0.9
    #: Also search the other product domain's partition (the whole photo, global embedding) when that
    #: domain has at least this share of the two product scores, or the photo is searched although
    #: the classifier leans to non_product: a product filed under the other domain is still found.
    #: 0.1: 10 % of clothing photos, 18 % of outfits and 4 % of grocery photos cost a second search,
    #: which reaches 47 % of the clothing photos the gate sends to other_product (docs/decisions.md).
    #: Above 0.5 (with the gate off): never.
    second_domain_share: float = 0.1
    #: Decode a large JPEG first only as small as the gate reads it (JPEG
    #: draft mode), and in full only when the gate passes it: a non-product
    #: photo then costs less (640-2,560 px: 1.3-5.7 ms less), a product photo
    #: a second, smaller decode (0.4 ms at 700 px, 2-6 ms at 1,400-2,800 px;
    #: docs/benchmarks.md). Off: every photo is decoded once, in full.
    preview_decode: bool = True


@dataclass
class DetectConfig:
    """Step 2 for apparel: find every garment."""

    enabled: bool = True
    #: The shipped garment head (docs/benchmarks/detect.md); "none" searches apparel photos whole.
    detector: str = "default"
    #: The head's scores are averaged heat: 0.05 gives recall 0.80 at 7.7 boxes per photo.
    min_score: float = 0.05
    max_garments: int = 8
    #: A search embeds only boxes of at least this score (``shoplens detect`` reports all above
    #: ``min_score``): with ``region_iou`` and ``whole_photo_area``, 7.8 -> 5.1 regions per held-out
    #: outfit photo at 0.83 of the garments covered (0.85 before), 6.0 -> 1.5 per single-garment
    #: photo (docs/benchmarks.md section 3, docs/decisions.md).
    search_min_score: float = 0.15
    #: A searched box overlapping a better one of any label with IoU at least this is not searched.
    region_iou: float = 0.8
    #: When the best garment covers at least this share of the photo, the whole photo is the one
    #: region searched (a garment laid flat); above 1: never.
    whole_photo_area: float = 0.25
    #: Also search the whole photo as one more region.
    whole_image: bool = False


@dataclass
class DomainModelConfig:
    """A recognition model: a backbone and the input size it is fed at."""

    backbone: str = "efficientnet_lite0"
    input_size: int = 224
    #: Registered pooling of the stride-32 map (``shoplens.embed.list_poolings()``).
    pooling: str = "rmac-s32"
    #: More input sizes whose pooled descriptors are concatenated (multi-scale); "" for none.
    extra_sizes: str = ""
    #: Weight of the photo's colour histogram appended to the descriptor (0: none; shoplens.embed.colour).
    colour: float = 0.0


@dataclass
class EmbedConfig:
    """Step 2: one recognition model per domain."""

    #: Garment crops: GeM at 224 px (per-garment search served 0.285 of garments
    #: vs 0.268 with R-MAC, same run; docs/benchmarks.md).
    apparel: DomainModelConfig = field(default_factory=lambda: DomainModelConfig(pooling="gem3-s32"))
    #: Packaged goods and produce: R-MAC at 224 and 320 px (docs/benchmarks/embedq.md) and the
    #: colour histogram (R@1 after train-embedder +0.03-0.05, docs/benchmarks.md section 4).
    other_product: DomainModelConfig = field(default_factory=lambda: DomainModelConfig(extra_sizes="320", colour=0.7))


@dataclass
class SearchConfig:
    """Steps 3-6: similar set, rank filter, entropy filter, ordering."""

    #: Cap of the similar set (neighbours fetched from the index, step 3).
    similar_k: int = 50
    #: Neighbours farther than this are not similar (step 3); 0 … 2.
    max_distance: float = 2.0
    rank_filter: bool = True
    min_rank: float = 1.08
    #: How step 4's distances are calibrated: "auto" (the store's calibration: fitted at index time
    #: on synthetic views of the catalogue photos, or by train-embedder on labelled ones; a default
    #: margin over the query's background before the first fit) or "off" (SPEC's raw distances).
    calibration: str = "auto"
    #: The precision of the returned set that the default min_rank stands for, in the calibration
    #: fitted at index time (same product; docs/benchmarks.md section 1 gives stated vs measured).
    target_precision: float = 0.06
    entropy_filter: bool = True
    max_entropy_bits: float = 3.0
    category_order: bool = True
    #: Step 6 moves a hit before a better-ranked one of a higher-scoring category only when their
    #: ranks differ by less than this: categories break near-ties, never a clear difference. 0.02
    #: groups 1.7x as many neighbours by category as rank order at the same R@5 on the grocery
    #: train photos, where SPEC's plain ordering (2) cost 0.04 of R@5 (docs/decisions.md).
    order_tolerance: float = 0.02
    #: Cap of each returned result list.
    top_k: int = 10


@dataclass
class LocalFeaturesConfig:
    """Local features for ``other_product`` (printed labels, packages): their own index, fused with the global one.

    Each candidate's distance becomes ``global distance × exp(−weight × ASMK score)``
    (ASMK scores are comparable across queries, so the result stays a distance
    in 0 … 2 that the rank filter can threshold); with ``verify``, the
    ``shortlist`` closest are checked geometrically and those with
    ``min_inliers`` RANSAC inliers or more come closer by the fraction ``verified_bonus``.
    """

    enabled: bool = True
    weight: float = 8.0
    #: Which images the local features score: "candidates" (the global search's candidates
    #: only: the cost does not grow with the catalogue), "all" (every indexed image, which
    #: adds up to ``candidates`` images the global search missed; its cost grows linearly with the
    #: catalogue: 20 ms at 2,000 store photos, 529 ms at 100,000; docs/benchmarks.md, section 5),
    #: or "auto": "all" while the local index holds at most ``all_up_to`` images. Printed labels
    #: of one design in many variants look alike to the global embedding: against 130 labels and
    #: 2,000 look-alikes, R@1 0.18 with "candidates", 0.95 with "all" (benchmarks/labels.py).
    scope: str = "auto"
    all_up_to: int = 5000
    #: With scope "all": images taken from the local index per query (besides the global candidates).
    candidates: int = 100
    verify: bool = True
    shortlist: int = 10
    #: Candidates verified besides the ``shortlist`` best fused ones: the best by local score alone.
    local_shortlist: int = 10
    min_inliers: int = 15
    verified_bonus: float = 0.3
    #: Longest side photos are shrunk to before SIFT, and keypoints kept (changing either needs a re-index).
    max_side: int = 512
    max_keypoints: int = 1000
    #: Longest side a query photo is shrunk to before SIFT (0: ``max_side``; no re-index needed).
    #: 384: SIFT on a large upload 55 -> 39 ms, sharp synthetic labels keep a median of 68 RANSAC
    #: inliers (131 at 512, 24 at 224; 15 verify); photos of 384 px or less are not touched
    #: (docs/benchmarks.md section 5; docs/decisions.md).
    query_max_side: int = 384
    #: Skip the stage when the global distance of the second-closest product exceeds the
    #: closest one's by at least this much (0: never skip). 0.03 skipped 32 % (untrained) and
    #: 85 % (trained head) of the grocery val searches with R@1 0.429 -> 0.443 and 0.780 -> 0.787
    #: (docs/benchmarks/lat.md).
    skip_margin: float = 0.03
    #: Skip the stage when the intent gate's ImageNet classes put at least this probability on
    #: loose fresh produce (fruit, vegetables, mushrooms; 0: never skip), where local features
    #: barely tell products apart. 0.1 skipped 58-62 % of the grocery store photos (1 package in
    #: 964); R@1 against the catalogue images 0.453 -> 0.443 (val), 0.441 -> 0.442 (train), against
    #: catalogue + train photos 0.672 -> 0.659 (docs/benchmarks.md, section 5).
    skip_produce: float = 0.1


@dataclass
class StoreConfig:
    """The store engine and its vector index.

    The store location picks the engine (a folder: ``embedded``;
    ``milvus://HOST:PORT/NAME`` or ``milvus-lite:PATH.db``: ``milvus``).
    """

    #: "auto" (whatever the location says), or "embedded" / "milvus" to insist on one.
    engine: str = "auto"
    #: "auto" (exact while small, approximate when large), "flat", "ivfflat", "ivfsq8", "ivfpq";
    #: Milvus also takes "hnsw" ("auto" is Milvus's AUTOINDEX).
    index: str = "auto"


@dataclass
class RuntimeConfig:
    """How the backbones run on the CPU."""

    #: "auto" (OpenVINO for the convolutional backbones, else ONNX Runtime,
    #: torch for the rest or when neither can run them), "torch" (eager
    #: PyTorch, batch norms folded, channels-last), "onnx" (ONNX Runtime,
    #: convolutional backbones only; its forward pass is 2-5x eager torch on
    #: CPU) or "openvino" (OpenVINO in f32, the same exported graph; 1.3-1.8x
    #: ONNX Runtime on the reference CPU, docs/benchmarks.md "Speed").
    engine: str = "auto"
    #: CPU threads for inference; 0 = the runtime's default (all cores).
    threads: int = 0
    #: "f32", or "bf16": OpenVINO computes in bfloat16 on CPUs that have it
    #: (AMX, AVX512-BF16), ~1.6x the f32 forward pass at batch 32, with the
    #: accuracy cost stated in docs/benchmarks.md ("Speed"). OpenVINO only.
    precision: str = "f32"
    #: MiB of freed memory the process keeps for the next search instead of
    #: handing it back to the kernel (glibc only; 0 = the C library's own
    #: thresholds): SIFT on a query photo 32 -> 21 ms (shoplens.allocator).
    malloc_trim_mib: int = 64
    #: How many single-photo input shapes OpenVINO compiles on their own (the
    #: most frequent recent ones): the forward pass without re-planning for
    #: its size, about 1.2 ms less at 224 px, for 27-40 MiB each with
    #: EfficientNet-Lite0 (shoplens.models.openvino_runtime.OpenVinoSession).
    #: Six: a search stream's recurring shapes, the gate's included (docs/decisions.md).
    #: 0 = one compilation for every size.
    static_shapes: int = 6


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
            for part in parts[:-1]:
                node = node.setdefault(part, {})
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
            changes[key] = _coerce(current, value, path)
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
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if isinstance(current, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


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
