"""The garment detector: registry, shipped weights, decoding, photo coordinates, training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shoplens.detect import Garment, create_detector, list_detectors
from shoplens.detect.head import (
    GarmentHead,
    HeadConfig,
    HeadDetector,
    decode,
    fold_batch_norm,
    load_head,
    load_heads,
    save_head,
)
from shoplens.detect.metrics import DetectionScores, iou_matrix, match
from shoplens.detect.regions import search_regions, suppress_across_labels
from shoplens.detect.train import MAIN_LABELS, is_validation, read_outfits, split_outfits, train_detector
from shoplens.errors import ShoplensError, UnknownModelError
from shoplens.imaging import load_image, photo_from_array
from shoplens.models import Encoding

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHOPLENS_DATA", ROOT.parent / "shared" / "data"))
OUTFITS = DATA / "outfits"
needs_outfits = pytest.mark.skipif(
    not (OUTFITS / "garments.jsonl").exists(), reason=f"outfits photos not found under {OUTFITS} (set SHOPLENS_DATA)"
)
WEIGHTS = ROOT / "src" / "shoplens" / "detect" / "data" / "garment_head.pt"


# ----------------------------------------------------------------------------- no data needed


def test_registry_has_default_and_none() -> None:
    assert {"default", "none", "head:"} <= set(list_detectors())
    with pytest.raises(UnknownModelError):
        create_detector("no-such-detector")


def test_default_loads_the_shipped_weights() -> None:
    assert WEIGHTS.exists() and WEIGHTS.stat().st_size < 4 * 2**20
    det = create_detector("default")
    assert isinstance(det, HeadDetector)
    assert det.backbone == "efficientnet_lite0" and det.input_size == 384
    assert set(det.labels) == {"top", "outerwear", "dress", "bottom", "shoes", "bag", "hat"}
    assert len(det.heads) == 3 and det.max_boxes == 8
    from_file = create_detector(f"head:{WEIGHTS}")
    assert isinstance(from_file, HeadDetector)
    for a, b in zip(load_heads(), load_heads(WEIGHTS)):
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(x, y)


def test_bad_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ShoplensError, match="cannot read"):
        load_head(bad)
    with pytest.raises(ShoplensError, match="not found"):
        load_head(tmp_path / "missing.pt")
    torch.save({"something": "else"}, bad)
    with pytest.raises(ShoplensError, match="not a shoplens garment head"):
        load_head(bad)


def test_folding_batch_norm_keeps_outputs() -> None:
    torch.manual_seed(0)
    head = GarmentHead(HeadConfig())
    for m in head.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
    head.eval()
    x = (torch.randn(1, 40, 12, 9), torch.randn(1, 112, 6, 5), torch.randn(1, 1280, 3, 3))
    with torch.no_grad():
        a, b = head(*x), fold_batch_norm(head)(*x)
    assert torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-4)


def test_decode_reads_peaks_and_sides() -> None:
    heat = torch.full((7, 10, 8), -10.0)
    sides = torch.zeros((4, 10, 8))
    heat[0, 2, 3] = 3.0  # a top centred in cell (row 2, col 3)
    sides[:, 2, 3] = torch.log(torch.tensor([2.0, 1.0, 2.0, 3.0]))  # in strides
    heat[4, 8, 1] = 2.0  # two shoes, and a weaker neighbour that is not a peak
    heat[4, 8, 5] = 1.0
    heat[4, 8, 6] = 0.5
    caps = {i: (2 if i == 4 else 1) for i in range(7)}
    found = decode(heat, sides, 8, max_per_label=caps, min_score=0.3, average=False)
    assert [f[1] for f in found] == [0, 4, 4]
    assert found[0][0] == pytest.approx((28 - 16, 20 - 8, 28 + 16, 20 + 24))
    # Averaging over the 3x3 neighbours weighs them by heat: cold neighbours barely move the box.
    averaged = decode(heat, sides, 8, max_per_label=caps, min_score=0.3)
    assert averaged[0][0] == pytest.approx(found[0][0], abs=0.01) and averaged[0][0] != found[0][0]
    assert found[0][2] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert [f[2] for f in found] == sorted((f[2] for f in found), reverse=True)
    none = decode(heat, sides, 8, max_per_label={i: 1 for i in range(7)}, min_score=0.99)
    assert none == []


class _FixedHead(GarmentHead):
    """A head whose maps are set by the test: one top peak at cell (1, 2)."""

    def forward(self, s8: torch.Tensor, s16: torch.Tensor, s32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = s8.shape
        heat = torch.full((n, len(self.cfg.labels), h, w), -10.0)
        heat[:, 0, 1, 2] = 4.0
        sides = torch.zeros((n, 4, h, w))
        sides[:, :, 1, 2] = torch.log(torch.tensor([1.0, 2.0, 1.0, 4.0]))
        return heat, sides


def test_boxes_are_mapped_to_photo_pixels() -> None:
    """An input-pixel box comes back in the photo's own (as given) coordinates, clipped to it."""
    det = HeadDetector(_FixedHead(HeadConfig()), average=False)
    photo = photo_from_array(np.zeros((64, 48, 3), np.uint8))  # photo twice the input size
    maps = {"s8": torch.zeros(40, 4, 3), "s16": torch.zeros(112, 2, 2), "s32": torch.zeros(1280, 1, 1)}
    found = det.detect([Encoding(photo=photo, input_hw=(32, 24), features=maps)])[0]
    assert [g.label for g in found] == ["top"]
    # Cell (1, 2): centre (20, 12) in input pixels; sides (8, 16, 8, 32) -> (12, -4, 28, 44)
    # -> x2 in the photo -> (24, -8, 56, 88) -> clipped to the 48 x 64 photo.
    assert found[0].box == pytest.approx((24.0, 0.0, 48.0, 64.0))
    with pytest.raises(ShoplensError, match="s8/s16/s32"):
        det.detect([Encoding(photo=photo, input_hw=(32, 24), features={"s32": maps["s32"]})])


def test_match_is_one_to_one_and_needs_the_label() -> None:
    truth = [((0, 0, 10, 10), "shoes"), ((20, 0, 30, 10), "shoes"), ((0, 0, 10, 10), "bag")]
    pred = [((0, 0, 10, 11), "shoes", 0.9), ((1, 0, 10, 10), "shoes", 0.8), ((0, 0, 10, 10), "top", 0.7)]
    found, used = match(pred, truth)
    assert found == [True, False, False] and used == [True, False, False]
    assert iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(1 / 3)
    scores = DetectionScores(labels=("shoes", "bag"))
    scores.add(pred, truth)
    s = scores.summary()
    assert s["recall"] == pytest.approx(1 / 3, abs=1e-4) and s["precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["boxes_per_photo"] == 3


def test_split_is_stable_and_disjoint() -> None:
    names = [Path(f"images/{i:04d}.jpg") for i in range(1, 601)]
    val = [n for n in names if is_validation(n, 0.25)]
    assert 120 <= len(val) <= 180
    assert val == [n for n in reversed(names) if is_validation(n.name, 0.25)][::-1]


def _synthetic_outfits(root: Path, n: int) -> Path:
    """Photos of a pale 'top' block over a dark 'bottom' block, boxed like garments.jsonl."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        img = np.full((192, 128, 3), 200, np.uint8)
        y = int(rng.integers(10, 40))
        img[y : y + 60, 30:100] = (220, 40, 40)
        img[y + 60 : y + 140, 35:95] = (30, 30, 120)
        Image.fromarray(img).save(root / "images" / f"{i}.jpg")
        garments = [{"label": "top", "box": [30, y, 100, y + 60]}, {"label": "bottom", "box": [35, y + 60, 95, y + 140]}]
        lines.append(json.dumps({"image": f"images/{i}.jpg", "garments": garments}))
    (root / "garments.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_train_detector_quick_run_is_deterministic(tmp_path: Path) -> None:
    root = _synthetic_outfits(tmp_path / "data", 8)
    train, val = split_outfits(read_outfits(root / "garments.jsonl", root), 0.5)
    assert train and val
    kw = dict(epochs=2, val_fraction=0.5, train_sizes=(128, 160), input_size=160, batch_size=4, members=((1, 16), (1, 24)))
    report = train_detector(root, tmp_path / "a.pt", seed=3, **kw)  # type: ignore[arg-type]
    d = report.to_dict()
    assert d["train_photos"] == len(train) and d["val_photos"] == len(val) and d["epochs"] == 4
    assert 0.0 <= d["recall"] <= 1.0 and len(d["losses"]) == 2 and d["ms_per_photo"] > 0
    det = create_detector(f"head:{tmp_path / 'a.pt'}")
    assert isinstance(det, HeadDetector) and det.input_size == 160 and [h.cfg.channels for h in det.heads] == [16, 24]
    again = train_detector(root, tmp_path / "b.pt", seed=3, **kw)  # type: ignore[arg-type]
    assert again.losses == report.losses
    for a, b in zip(load_heads(tmp_path / "a.pt"), load_heads(tmp_path / "b.pt")):
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(x, y)
    other = train_detector(root, tmp_path / "c.pt", seed=4, **kw)  # type: ignore[arg-type]
    assert other.losses != report.losses
    with pytest.raises(ShoplensError):
        train_detector(root, tmp_path / "d.pt", val_fraction=1.5)
    with pytest.raises(ShoplensError, match="garments.jsonl"):
        train_detector(tmp_path, tmp_path / "d.pt")


def test_augmented_views_keep_boxes_on_the_garments() -> None:
    """A mirrored, zoomed view: a block's box still frames that block's pixels."""
    from shoplens.detect import train as T

    img = np.full((96, 64, 3), 127, np.uint8)
    img[20:50, 10:30] = 255  # a white block, left half
    canvas = T._Canvas(
        pixels=torch.full((1, 3, 96, 96), 127, dtype=torch.uint8),
        hw=np.array([[96, 64]]),
        boxes=[np.array([[10, 20, 30, 50]], np.float32)],
        labels=[np.array([0])],
    )
    canvas.pixels[0, :, :96, :64] = torch.from_numpy(img).permute(2, 0, 1)
    view = T._View(x0=0.0, y0=10.0, x1=64.0, y1=74.0, flip=True, gain=1.0, bias=0.0)
    x = T._render(canvas, [0], [view], (128, 128), torch.device("cpu"))[0]
    boxes, labels, ignore = T._view_boxes(canvas.boxes[0], canvas.labels[0], view, (128, 128))
    assert labels.tolist() == [0] and len(ignore) == 0
    x0, y0, x1, y1 = boxes[0]
    assert (x0, y0, x1, y1) == pytest.approx((68.0, 20.0, 108.0, 80.0))  # mirrored, 2x
    inside = x[0, int(y0) + 2 : int(y1) - 2, int(x0) + 2 : int(x1) - 2]
    assert float(inside.min()) > 0.9  # white
    assert float(x[0, 40:60, 10:50].max()) < 0.1  # the other half stays grey


def test_ensemble_file_round_trip_and_caps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    heads = [GarmentHead(HeadConfig(channels=8, tower=1)).eval(), GarmentHead(HeadConfig(channels=16, tower=1)).eval()]
    save_head(heads, tmp_path / "e.pt")
    back = load_heads(tmp_path / "e.pt")
    assert [h.cfg.channels for h in back] == [8, 16] and load_head(tmp_path / "e.pt").cfg.channels == 8
    det = HeadDetector(back, min_score=0.0, max_boxes=5)
    photo = photo_from_array(np.zeros((64, 48, 3), np.uint8))
    maps = {"s8": torch.randn(40, 8, 6), "s16": torch.randn(112, 4, 3), "s32": torch.randn(1280, 2, 2)}
    found = det.detect([Encoding(photo=photo, input_hw=(64, 48), features=maps)])[0]
    assert len(found) <= 5 and sum(g.label == "shoes" for g in found) <= 3 and sum(g.label == "top" for g in found) <= 1
    assert [g.score for g in found] == sorted((g.score for g in found), reverse=True)


@pytest.mark.parametrize("engine", ["onnx", "auto"])
def test_heads_in_onnx_runtime_or_openvino_give_the_torch_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    from shoplens.models.openvino_runtime import OpenVinoSession

    monkeypatch.setenv("SHOPLENS_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    heads = [GarmentHead(HeadConfig(channels=8, tower=1)).eval(), GarmentHead(HeadConfig(channels=16, tower=1)).eval()]
    photo = photo_from_array(np.zeros((64, 48, 3), np.uint8))
    det_torch = HeadDetector(heads, min_score=0.0)
    det_onnx = HeadDetector(heads, min_score=0.0, engine=engine)
    for shape in ((8, 6), (12, 8)):  # any map size: the graph's spatial axes are dynamic
        h, w = shape
        maps = {"s8": torch.randn(40, h, w), "s16": torch.randn(112, h // 2, w // 2), "s32": torch.randn(1280, h // 4, w // 4)}
        enc = Encoding(photo=photo, input_hw=(8 * h, 8 * w), features=maps)
        (ht, st), (ho, so) = det_torch.maps(enc), det_onnx.maps(enc)
        assert torch.allclose(ht, ho, atol=1e-4) and torch.allclose(st, so, atol=1e-4)
        a, b = det_torch.detect([enc])[0], det_onnx.detect([enc])[0]
        assert [g.label for g in a] == [g.label for g in b] and len(a) > 0
        assert [g.score for g in a] == pytest.approx([g.score for g in b], abs=1e-4)
    # auto: OpenVINO (the backbones' default runtime), so ONNX Runtime need not be loaded beside it
    assert isinstance(det_onnx._onnx, OpenVinoSession) == (engine == "auto")
    assert list((tmp_path / "cache" / "onnx").glob("garment-heads-*.onnx"))  # exported once, into the cache
    with pytest.raises(ShoplensError):
        HeadDetector(heads, engine="tpu")


# ----------------------------------------------------------------------------- real photos


@pytest.fixture(scope="module")
def backbone():  # type: ignore[no-untyped-def]
    from shoplens.models import create_model

    return create_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def val_photos():  # type: ignore[no-untyped-def]
    _, val = split_outfits(read_outfits(OUTFITS / "garments.jsonl", OUTFITS), 0.25)
    return val[:10]


@pytest.mark.data
@needs_outfits
def test_finds_most_annotated_garments(backbone, val_photos) -> None:  # type: ignore[no-untyped-def]
    det = create_detector("default")
    encs = backbone.encode([load_image(p.image) for p in val_photos], input_size=det.input_size)
    scores = DetectionScores(labels=MAIN_LABELS)
    for p, found in zip(val_photos, det.detect(encs)):
        assert len(found) <= 8
        scores.add([(g.box, g.label, g.score) for g in found], list(zip(p.boxes, p.labels)))
    assert scores.recall() >= 0.65, scores.summary()


def _same_boxes(a: list[Garment], b: list[Garment], scale: float) -> None:
    """Every confident garment of ``a`` is in ``b`` (same label, box scaled, IoU >= 0.5).

    Weak peaks (score < 0.3) near the threshold may swap places or drop out
    when the pixels are resampled, so only confident ones are compared; a
    shoe is a few dozen pixels, so resampling moves its box by a few pixels
    (IoU 0.5 is the detection criterion; a wrong mapping gives about 0).
    """
    sure = [g for g in a if g.score >= 0.3]
    assert len(sure) >= 3
    for ga in sure:
        ref = np.array(ga.box) * scale
        best = max((iou_matrix(ref, np.array(gb.box))[0, 0] for gb in b if gb.label == ga.label), default=0.0)
        assert best >= 0.5, (ga, b)


@pytest.mark.data
@needs_outfits
def test_boxes_follow_upscaled_and_exif_rotated_copies(backbone, val_photos, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    det = create_detector("default")
    src = val_photos[0].image
    original = load_image(src)
    ref = det.detect(backbone.encode([original], input_size=det.input_size))[0]
    assert len(ref) >= 3

    pil = Image.open(src)
    big = tmp_path / "big.jpg"
    pil.resize((pil.width * 4, pil.height * 4), Image.Resampling.BICUBIC).save(big, quality=95)
    photo = load_image(big, target_size=det.input_size)  # decoded at a reduced scale
    assert photo.size == (pil.width * 4, pil.height * 4) and photo.scale > 1
    _same_boxes(ref, det.detect(backbone.encode([photo], input_size=det.input_size))[0], 4.0)

    # Stored sideways with an EXIF tag saying "rotate to view": boxes are in the upright photo.
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    pil.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif)
    photo = load_image(rotated)
    assert photo.size == pil.size
    _same_boxes(ref, det.detect(backbone.encode([photo], input_size=det.input_size))[0], 1.0)


def test_cli_train_detector_needs_an_outfits_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shoplens.cli import main

    assert main(["train-detector", str(tmp_path), "--out", str(tmp_path / "h.pt")]) != 0
    assert "garments.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "h.pt").exists()


# ----------------------------------------------------------------------------- regions a search reads


#: What the detector gives for a skirt laid flat: one garment, boxes of seven labels over it.
SKIRT = [
    Garment((40, 30, 280, 300), "bottom", 0.35),
    Garment((45, 35, 275, 290), "bag", 0.22),
    Garment((38, 25, 282, 305), "top", 0.18),
    Garment((42, 28, 279, 302), "dress", 0.12),
    Garment((120, 200, 200, 280), "bag", 0.09),
    Garment((41, 31, 281, 299), "outerwear", 0.07),
    Garment((200, 260, 260, 310), "shoes", 0.05),
]
#: An outfit: top, bottom and two shoes, a weak bag, each a different part of a 200 x 400 photo.
OUTFIT = [
    Garment((50, 60, 150, 180), "top", 0.6),
    Garment((55, 170, 145, 320), "bottom", 0.5),
    Garment((50, 330, 95, 370), "shoes", 0.4),
    Garment((105, 330, 150, 370), "shoes", 0.35),
    Garment((140, 150, 190, 220), "bag", 0.1),
]


def test_boxes_of_other_labels_over_the_same_garment_are_one_region() -> None:
    kept = suppress_across_labels(SKIRT, 0.8)
    assert [g.label for g in kept] == ["bottom", "bag", "shoes"]  # the small bag and the shoes are elsewhere
    assert suppress_across_labels(OUTFIT, 0.8) == OUTFIT


def test_a_search_reads_confident_distinct_boxes_and_a_dominant_garment_as_the_whole_photo() -> None:
    rule = {"min_score": 0.15, "iou": 0.8, "whole_photo_area": 0.3}
    assert search_regions(SKIRT, (320, 320), **rule) == [Garment((0.0, 0.0, 320.0, 320.0), "bottom", 0.35)]
    # Not dominant (a third of a larger photo is more): the confident, distinct boxes.
    assert search_regions(SKIRT, (640, 640), **rule) == [SKIRT[0]]
    assert search_regions(OUTFIT, (200, 400), **rule) == OUTFIT[:4]  # the 0.1 bag is under the search threshold
    weak = [Garment((0, 0, 10, 10), "hat", 0.08), Garment((20, 20, 30, 30), "bag", 0.06)]
    assert search_regions(weak, (200, 400), **rule) == weak[:1]  # none passes: the best one is still searched
    assert search_regions([], (200, 400), **rule) == []
    # A top over half the photo, with shoes outside it: two garments, not one dominant.
    half = [Garment((0, 0, 200, 150), "top", 0.9), Garment((0, 150, 100, 300), "shoes", 0.8)]
    assert search_regions(half, (200, 300), **rule) == half


@pytest.mark.data
@pytest.mark.slow
@needs_outfits
def test_searched_regions_still_cover_the_outfits_garments_and_not_flood_single_garments(backbone) -> None:  # type: ignore[no-untyped-def]
    """The default thresholds on real photos: held-out outfits keep >= 0.80 of their garments covered; single garments ~1 region."""
    import csv

    from shoplens.config import Config

    d = Config().detect
    det = create_detector("default")
    rule = {"min_score": d.search_min_score, "iou": d.region_iou, "whole_photo_area": d.whole_photo_area}
    _, val = split_outfits(read_outfits(OUTFITS / "garments.jsonl", OUTFITS), 0.25)
    covered = total = regions = 0
    for p in val:
        photo = load_image(p.image)
        found = det.detect(backbone.encode([photo], input_size=det.input_size))[0]
        chosen = search_regions(found, photo.size, **rule)
        regions += len(chosen)
        main = [b for b, lab in zip(p.boxes, p.labels) if lab in MAIN_LABELS]
        if main and chosen:
            covered += int((iou_matrix(np.array([g.box for g in chosen]), np.array(main)) >= 0.5).any(0).sum())
        total += len(main)
    assert covered / total >= 0.80 and regions / len(val) <= 5.5, (covered / total, regions / len(val))
    with open(DATA / "clothing" / "labels.csv", newline="") as f:
        skirts_and_tees = [r for r in csv.DictReader(f) if r["label"] in ("Skirt", "T-Shirt")][:40]
    counts = []
    for r in skirts_and_tees:
        photo = load_image(DATA / "clothing" / r["image"])
        found = det.detect(backbone.encode([photo], input_size=det.input_size))[0]
        assert len(found) >= 1
        counts.append(len(search_regions(found, photo.size, **rule)))
    assert np.mean(counts) <= 1.5, counts
