"""Indexing throughput, side by side in one run, on real photos (grocery store photos).

(a) naive loop: PIL open, squash to 224 px, one eager EfficientNet-Lite0
    forward pass (NCHW, no_grad) per batch of 32;
(b) the backbone forward pass alone at the same batch size (pre-made
    224x224 tensors; nothing else; timed after one untimed batch) in each
    runtime: eager NCHW, channels-last + inference_mode, ONNX Runtime fp32,
    OpenVINO f32 (and, with the runtime ``onnx-int8``, a static int8 copy
    calibrated on 64 grocery val photos: see int8_accuracy.py for what it
    costs in accuracy);
(c) shoplens' own Indexer end to end (read + decode + preprocess + embed +
    write into a fresh store, through ``Shoplens.index`` with local features
    off), per runtime; the model is loaded and runs one untimed batch first,
    as in (b) (OpenVINO compiles large passes on their own, and gives that
    compilation up when idle);
(d) with ``--with-local``: ``Shoplens.index`` as configured by default, which
    also extracts SIFT local features of every other_product photo, per
    exported runtime (onnx, openvino).
(e) the passes the default other_product descriptor needs (224 and 320 px)
    alone, per exported runtime, so the Indexer can be compared with its own
    forward passes: what decoding, I/O, pooling and writing add.
(f) with ``--single-pass``: the Indexer with a one-pass other_product
    descriptor (``embed.other_product.extra_sizes=""``, the latency setup
    of docs/configuration.md), per exported runtime, compared with the
    224-px forward pass alone.

The measures are interleaved over ``--rounds`` rounds and each figure is the
median over rounds, so a busy machine slows all of them alike.

    python benchmarks/index_throughput.py --photos 160 --rounds 3 --runtimes torch,onnx,openvino --with-local --single-pass
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import data_root, rows

from shoplens import Shoplens
from shoplens.imaging import load_image
from shoplens.models import Backbone, create_model
from shoplens.models.efficientnet_lite import build_efficientnet_lite
from shoplens.models.onnx_runtime import OnnxConvBackbone, quantize_int8


def naive(paths: list[Path], model: torch.nn.Module, batch: int) -> None:
    for start in range(0, len(paths), batch):
        arrays = [np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32) for p in paths[start : start + batch]]
        x = torch.from_numpy((np.stack(arrays) - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            model(x)


def forward_only(run: Callable[[], object], n_batches: int) -> float:
    """Seconds of ``n_batches`` passes after one untimed pass: the steady forward pass.

    Between rounds an OpenVINO backbone gives up its large passes' compilation
    (idle for more than 10 s), so a round's first batch would also pay for
    compiling and allocating again.
    """
    run()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        run()
    return time.perf_counter() - t0


def indexer(
    paths: list[Path], engine: str, tmp: Path, tag: str, backbone: Backbone | None = None, local: bool = False, single_pass: bool = False
) -> dict[str, float]:
    csv = tmp / f"catalog-{tag}.csv"
    csv.write_text("product_id,image,category,domain\n" + "".join(f"p{i},{p},grocery,other_product\n" for i, p in enumerate(paths)))
    flags: dict[str, object] = {"runtime.engine": "onnx" if engine == "onnx-int8" else engine, "local.enabled": local}
    if single_pass:
        flags["embed.other_product.extra_sizes"] = ""
    warm_batch = torch.zeros((32, 3, 224, 224))
    with Shoplens(tmp / f"store-{tag}", **flags) as lens:
        if backbone is not None:  # the int8 graph is not a configured runtime: hand it to the pipeline
            lens.pipeline._backbones["efficientnet_lite0"] = backbone
        model = lens.pipeline.backbone("efficientnet_lite0")  # model loading (export, compilation) is not indexing,
        model.forward(warm_batch)  # nor is OpenVINO's compilation for large passes (dropped after 10 s idle)
        t0 = time.perf_counter()
        report = lens.index(csv)
        elapsed = time.perf_counter() - t0
    assert report.images_added == len(paths), report.to_dict()
    return {**report.timings_s, "index_call": elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=256, help="grocery photos per measure")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--with-local", action="store_true", help="also time Shoplens.index with local features on (the default)")
    ap.add_argument("--single-pass", action="store_true", help="also time the Indexer with a one-pass (224 px) other_product descriptor")
    ap.add_argument("--runtimes", default="torch,onnx,onnx-int8", help="comma-separated: torch, onnx, openvino, onnx-int8")
    args = ap.parse_args()
    root = data_root() / "grocery"
    paths = [root / r["image"] for r in rows(root / "photos.csv")][: args.photos]
    runtimes = args.runtimes.split(",")
    n_batches = max(1, len(paths) // args.batch)

    eager = build_efficientnet_lite("efficientnet_lite0")  # NCHW, its own copy
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224), dtype=np.float32))
    backbones: dict[str, Backbone] = {rt: create_model("efficientnet_lite0", runtime=rt) for rt in runtimes if rt != "onnx-int8"}
    tmp_int8 = tempfile.TemporaryDirectory()
    if "onnx-int8" in runtimes:
        fp32 = create_model("efficientnet_lite0", runtime="onnx")
        assert isinstance(fp32, OnnxConvBackbone)
        val = [root / r["image"] for r in rows(root / "photos.csv") if r["split"] == "val"][::4][:64]
        path = quantize_int8(fp32, [load_image(p, target_size=224) for p in val], Path(tmp_int8.name) / "int8.onnx")
        backbones["onnx-int8"] = OnnxConvBackbone(fp32, model_path=path)

    def eager_fwd() -> object:
        with torch.no_grad():
            return eager(x)

    # Each measure is timed around its call, or reports its own seconds (the Indexer's: Shoplens.index alone;
    # the forward passes': after their untimed batch).
    measures: dict[str, tuple[int, Callable[[], object]]] = {"a_naive_loop": (len(paths), lambda: naive(paths, eager, args.batch))}
    measures["b_forward_torch_eager_nchw"] = (n_batches * args.batch, lambda: forward_only(eager_fwd, n_batches))
    for rt, bb in backbones.items():
        measures[f"b_forward_{rt}" + ("_channels_last" if rt == "torch" else "")] = (
            n_batches * args.batch,
            lambda bb=bb: forward_only(lambda: bb.forward(x), n_batches),  # type: ignore[misc,attr-defined]
        )
    exported = [rt for rt in ("onnx", "openvino") if rt in backbones]
    x320 = torch.from_numpy(np.random.default_rng(1).standard_normal((args.batch, 3, 320, 320), dtype=np.float32))
    for rt in exported:  # the passes the default other_product descriptor needs: 224 and 320 px
        measures[f"e_forward_{rt}_224_and_320"] = (
            n_batches * args.batch,
            lambda bb=backbones[rt]: forward_only(lambda: (bb.forward(x), bb.forward(x320)), n_batches),  # type: ignore[misc,attr-defined]
        )
    stage_times: dict[str, list[dict[str, float]]] = {rt: [] for rt in runtimes}
    with tempfile.TemporaryDirectory() as tmpdir:
        def timed(key: str, engine: str, **kw: object) -> Callable[[], object]:
            runs = stage_times.setdefault(key, [])
            def run() -> float:  # the time of Shoplens.index alone: opening the store and loading the model are not timed
                runs.append(indexer(paths, engine, Path(tmpdir), f"{key}{len(runs)}".replace(" ", "-"), **kw))  # type: ignore[arg-type]
                return runs[-1]["index_call"]

            return run

        for rt in runtimes:
            bb = backbones[rt] if rt == "onnx-int8" else None
            measures[f"c_indexer_{rt}"] = (len(paths), timed(rt, rt, backbone=bb))
        for rt in exported:
            if args.with_local:  # Shoplens.index as configured by default: also extracts SIFT local features
                measures[f"d_index_{rt}_with_local_features"] = (len(paths), timed(f"{rt}+local", rt, local=True))
            if args.single_pass:
                measures[f"f_indexer_{rt}_single_pass"] = (len(paths), timed(f"{rt} single pass", rt, single_pass=True))
        eager_fwd()  # warm-up
        for bb in backbones.values():
            bb.forward(x)  # type: ignore[attr-defined]
        per_s: dict[str, list[float]] = {k: [] for k in measures}
        for r in range(args.rounds):
            for name, (n, fn) in measures.items():
                t0 = time.perf_counter()
                timed_s = fn()
                per_s[name].append(n / (timed_s if isinstance(timed_s, float) else time.perf_counter() - t0))
                print(f"round {r}: {name}: {per_s[name][-1]:.1f} img/s", file=sys.stderr)

    med = {k: round(statistics.median(v), 1) for k, v in per_s.items()}
    fastest_fwd = max(v for k, v in med.items() if k.startswith("b_"))
    out: dict[str, object] = {
        "photos": len(paths),
        "batch": args.batch,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "img_per_s_median": med,
        "img_per_s_rounds": {k: [round(x, 1) for x in v] for k, v in per_s.items()},
        "indexer_stage_s_median": {
            rt: {k: round(statistics.median(t[k] for t in ts), 2) for k in ts[0]} for rt, ts in stage_times.items() if ts
        },
    }
    for rt in exported:
        # How much of the Indexer's time its own backbone passes take: the rest is decode, I/O, pooling, writes.
        out[f"indexer_{rt}_over_its_own_forward"] = round(med[f"c_indexer_{rt}"] / med[f"e_forward_{rt}_224_and_320"], 2)
        if f"f_indexer_{rt}_single_pass" in med:
            f = med[f"f_indexer_{rt}_single_pass"]
            out[f"indexer_{rt}_single_pass_over_naive"] = round(f / med["a_naive_loop"], 2)
            out[f"indexer_{rt}_single_pass_over_its_own_forward"] = round(f / med[f"b_forward_{rt}"], 2)
            out[f"indexer_{rt}_single_pass_over_fastest_forward"] = round(f / fastest_fwd, 2)
    for rt in runtimes:
        c = med[f"c_indexer_{rt}"]
        out[f"indexer_{rt}_over_naive"] = round(c / med["a_naive_loop"], 2)
        out[f"indexer_{rt}_over_fastest_forward"] = round(c / fastest_fwd, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
