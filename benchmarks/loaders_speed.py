"""CPU time per photo of the optional backbones and OWLv2, beside efficientnet_lite0.

The real weights cannot be downloaded here, so each architecture is built at its
real size with random weights (speed does not depend on the weights) and run
through the same shoplens backbone / detector classes the loaders return.

    PYTHONPATH=src python benchmarks/loaders_speed.py [--photos 8] [--threads 2]

Prints a Markdown table: milliseconds per photo (best of --repeats) and the
ratio to efficientnet_lite0 measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from shoplens.imaging import Photo, photo_from_array


def _photos(n: int) -> list[Photo]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        h, w = (600, 800) if i % 2 == 0 else (800, 600)
        base = rng.integers(0, 255, size=(h // 8, w // 8, 3), dtype=np.uint8)
        out.append(photo_from_array(np.ascontiguousarray(base.repeat(8, 0).repeat(8, 1)), name=f"p{i}"))
    return out


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--owl-photos", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import transformers

    from shoplens.detect.owlv2 import GARMENT_QUERIES, OWLV2_PREPROCESS, Owlv2Detector
    from shoplens.models import Encoding, create_model
    from shoplens.models.dinov2 import DINOV2_PREPROCESS, Dinov2Backbone
    from shoplens.models.hf_clip import (
        CLIP_PREPROCESS,
        SIGLIP_PREPROCESS,
        ClipVisionBackbone,
        SiglipVisionBackbone,
    )

    photos = _photos(args.photos)
    rows: list[tuple[str, str, float]] = []

    def dinov2(hidden: int, heads: int) -> Dinov2Backbone:
        config = transformers.Dinov2Config(hidden_size=hidden, num_attention_heads=heads, image_size=518)
        return Dinov2Backbone("dinov2", transformers.Dinov2Model(config), DINOV2_PREPROCESS)

    backbones = {
        "efficientnet_lite0 (224, letterbox)": lambda: create_model("efficientnet_lite0"),
        "DINOv2 ViT-S/14 (dinov2-small, 224)": lambda: dinov2(384, 6),
        "DINOv2 ViT-B/14 (dinov2-base, 224)": lambda: dinov2(768, 12),
        "CLIP ViT-B/32 (clip-vit-b32, fashion-clip, 224)": lambda: ClipVisionBackbone(
            "clip",
            transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(projection_dim=512)),
            CLIP_PREPROCESS,
        ),
        "SigLIP ViT-B/16 (siglip-base, 224)": lambda: SiglipVisionBackbone(
            "siglip", transformers.SiglipVisionModel(transformers.SiglipVisionConfig()), SIGLIP_PREPROCESS
        ),
    }
    for label, build in backbones.items():
        backbone = build()
        seconds = _time(lambda b=backbone: b.encode(photos), args.repeats)
        rows.append((label, "backbone", 1000 * seconds / len(photos)))
        del backbone

    owl_config = transformers.Owlv2Config(vision_config={"image_size": 960, "patch_size": 16})
    model = transformers.Owlv2ForObjectDetection(owl_config)
    labels = [label for label, phrases in GARMENT_QUERIES.items() for _ in phrases]
    detector = Owlv2Detector(
        "owlv2-base", model, torch.randn(len(labels), owl_config.projection_dim), labels, OWLV2_PREPROCESS
    )
    few = [Encoding(p, (0, 0)) for p in photos[: args.owl_photos]]
    seconds = _time(lambda: detector.detect(few), 1)
    rows.append(("OWLv2 ViT-B/16 (owlv2-base, 960)", "detector", 1000 * seconds / len(few)))

    base = rows[0][2]
    print(f"| model | kind | ms / photo ({args.threads} threads) | × efficientnet_lite0 |")
    print("| --- | --- | --- | --- |")
    for label, kind, ms in rows:
        print(f"| {label} | {kind} | {ms:.0f} | {ms / base:.1f} |")


if __name__ == "__main__":
    main()
