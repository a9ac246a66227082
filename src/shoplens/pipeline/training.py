"""``train-embedder`` on a store: its raw descriptors plus optional labelled photos.

First, unless asked not to, each domain's backbone stage is tuned on the
catalogue photos and the labelled ones (shoplens.embed.tail) and the stored
images are re-encoded through it. The head is then trained on the stored raw
descriptors plus those of the labelled photos. The tuned stage, the head and
its rank calibration are saved in the store's models folder and the domain's
vectors are re-projected from the stored raw descriptors.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from ..catalog import read_labelled_csv
from ..config import DOMAINS, INTENTS
from ..embed.tail import supports_tail, tune_tail
from ..embed.training import CATEGORY_CFG, EmbedderReport, ProjectionCfg, holdout_mask, train_embedder, training_labels
from ..errors import BadImageError, CatalogueError, StoreError
from ..imaging import decode_batches, decode_many, read_image_file
from ..store.base import WriteBatch
from ..store.metadata import ImageRecord

if TYPE_CHECKING:
    from ..store import CatalogueStore
    from .search import Pipeline

logger = logging.getLogger(__name__)


def read_labelled(path: Path) -> list[tuple[Path, str]]:
    """(image file, product id) rows of a CSV with columns ``image`` (relative to the CSV) and ``product_id``."""
    rows = read_labelled_csv(path, ("image", "product_id"))
    out: list[tuple[Path, str]] = []
    for line, row in enumerate(rows, start=2):
        image, pid = row.get("image", ""), row.get("product_id", "")
        if not image or not pid:
            raise CatalogueError(f"{path}, line {line}: empty 'image' or 'product_id'")
        file = Path(image) if Path(image).is_absolute() else path.parent / image
        out.append((file, pid))
    return out


def _stored(store: CatalogueStore, domain: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw descriptors, product ids, categories) of a domain's stored images."""
    raws, pids, cats = [], [], []
    for ids, raw in store.iter_raw(domain):
        found = store.image_categories(ids.tolist())
        for i, row in zip(ids.tolist(), raw):
            if int(i) not in found:
                continue
            pid, category = found[int(i)]
            raws.append(row)
            pids.append(pid)
            cats.append(category or "")
    if not raws:
        return np.zeros((0, 0), np.float32), np.array([], str), np.array([], str)
    return np.stack(raws).astype(np.float32), np.array(pids), np.array(cats)


def _describe_labelled(
    pipeline: Pipeline, domain: str, todo: list[tuple[Path, str, str]], skipped: dict[str, int], gate_scores: list[float]
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Raw descriptors (in batches of 32), product ids and categories of the readable labelled photos.

    Decoded as the indexer decodes the catalogue (in parallel, to the
    pipeline's decode size); an unreadable photo is logged and counted.
    Each photo's non_product score from the store's intent gate is added
    to ``gate_scores`` (:func:`fit_stop_score`).
    """
    from .search import EncodingCache

    x_raw: list[np.ndarray] = []
    x_pid: list[str] = []
    x_cat: list[str] = []
    for chunk, decoded in decode_batches(todo, 32, lambda row: row[0], target_size=pipeline.decode_size, workers=2):
        photos, keep = [], []
        for (_, pid, cat), result in zip(chunk, decoded):
            if isinstance(result, BadImageError):
                logger.warning("train-embedder: skipping %s", result)
                skipped["unreadable"] += 1
            else:
                photos.append(result)
                keep.append((pid, cat))
        if photos:
            cache = EncodingCache(pipeline, photos)
            x_raw.append(pipeline.describe(domain, cache))
            gate_scores += pipeline.classify(cache)[:, INTENTS.index("non_product")].tolist()
            x_pid += [p for p, _ in keep]
            x_cat += [c for _, c in keep]
    return x_raw, x_pid, x_cat


def _shipped(pipeline: Pipeline, domain: str) -> str:
    """The configured backbone of ``domain``: its shipped weights, whatever stage a previous run tuned."""
    return str(getattr(pipeline.config.embed, domain).backbone)


def _stride16_maps(pipeline: Pipeline, domain: str, files: list[Path], progress: bool) -> tuple[list[torch.Tensor], np.ndarray]:
    """The shipped backbone's stride-16 maps (float16) of ``files`` at the domain's first input size,
    and a mask of the files that could be decoded."""
    emb = pipeline.embedders[domain]
    backbone = pipeline.backbone(_shipped(pipeline, domain))
    maps: list[torch.Tensor] = []
    ok: list[bool] = []
    bar = tqdm(total=len(files), unit="img", desc=f"{domain}: stride-16 maps", disable=not progress, leave=False)
    for chunk, decoded in decode_batches(files, 32, lambda f: f, target_size=pipeline.decode_size, workers=2):
        photos = [d for d in decoded if not isinstance(d, BadImageError)]
        ok += [not isinstance(d, BadImageError) for d in decoded]
        maps += [e.features["s16"].to(torch.float16).clone() for e in backbone.encode(photos, input_size=emb.input_size)]
        bar.update(len(chunk))
    bar.close()
    return maps, np.array(ok, bool)


def _tune_tail(store: CatalogueStore, pipeline: Pipeline, domain: str, extras: list[tuple[Path, str, str]], *,
               holdout: float, seed: int, progress: bool) -> dict[str, Any]:
    """Tune ``domain``'s backbone stage on its catalogue photos (and the labelled extras), then re-encode its stored images.

    Returns the report's ``tail`` entry. Nothing changes (``tuned`` false, with
    the reason) when the backbone has no such stage, a stored photo can no
    longer be read from its source, or no label has two photos. Photos held
    out by the head's check are left out here too, so the check stays fair.
    Cut short after the stage is saved, the store holds a mix of old and new
    descriptors under the old head: running ``train-embedder`` again (or
    ``index``, which re-encodes images of another signature) finishes the job.
    """
    name = _shipped(pipeline, domain)
    base = pipeline.backbone(name).torch_module()
    if not supports_tail(base):
        return {"tuned": False, "reason": f"backbone {name} has no stage to tune"}
    assert base is not None
    stored = [(im.product_id, im.source) for im in store.iter_images() if im.domain == domain]
    missing = [src for _, src in stored if not Path(src).is_file()]
    if missing:
        return {"tuned": False, "reason": f"{len(missing)} stored photo(s) cannot be read from their source (e.g. {missing[0]}); "
                                          "the backbone stage is tuned on the catalogue photos themselves"}
    records = store.get_products(sorted({pid for pid, _ in stored}))
    files = [Path(src) for _, src in stored] + [f for f, _, _ in extras]
    ids = np.array([pid for pid, _ in stored] + [pid for _, pid, _ in extras], dtype=str)
    cats = np.array([(records[pid].category or "") if pid in records else "" for pid, _ in stored] + [c for _, _, c in extras], dtype=str)
    chosen = training_labels(ids, cats if bool(np.all(cats != "")) else None)
    if chosen is None:
        return {"tuned": False, "reason": "no label has two photos: nothing to learn from"}
    labels, kind = chosen
    held = holdout_mask(labels, np.arange(len(ids)) < len(stored), holdout)
    train = np.flatnonzero(~held)
    maps, ok = _stride16_maps(pipeline, domain, [files[i] for i in train], progress)
    proxy_cfg = CATEGORY_CFG if kind == "category" else ProjectionCfg()
    tail = tune_tail(name, base, maps, labels[train][ok], proxy_cfg=proxy_cfg, seed=seed, progress=progress)
    pipeline.set_tail(domain, tail)
    reencoded, failed = _reencode(store, pipeline, domain, progress)
    return {"tuned": True, "labels": kind, "reencoded": reencoded, "reencode_failed": failed, **tail.info}


def _reencode(store: CatalogueStore, pipeline: Pipeline, domain: str, progress: bool) -> tuple[int, int]:
    """Re-describe the domain's stored images whose signature is not the embedder's (after its tail changed).

    Each chunk is one atomic store write (image replaced by the same product,
    source and content); a run cut short resumes where it stopped. Returns
    (re-encoded, unreadable) counts; an unreadable image keeps its old descriptor.
    """
    from .search import EncodingCache

    emb = pipeline.embedders[domain]
    todo = [(im.product_id, im.source) for im in store.iter_images() if im.domain == domain and im.signature != emb.signature]
    done = failed = 0
    bar = tqdm(total=len(todo), unit="img", desc=f"{domain}: re-encoding", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="shoplens-decode") as pool:
        for start in range(0, len(todo), 32):
            chunk = todo[start : start + 32]
            datas: list[bytes | None] = []
            for _, src in chunk:
                try:
                    datas.append(read_image_file(src))
                except BadImageError as err:
                    logger.warning("train-embedder: cannot re-encode %s: %s", src, err)
                    datas.append(None)
            readable = [(row, d) for row, d in zip(chunk, datas) if d is not None]
            decoded = decode_many([d for _, d in readable], names=[src for (_, src), _ in readable],
                                  target_size=pipeline.decode_size, pool=pool)
            good = [(row, d, photo) for (row, d), photo in zip(readable, decoded) if not isinstance(photo, BadImageError)]
            failed += len(chunk) - len(good)
            if good:
                raw = pipeline.describe(domain, EncodingCache(pipeline, [photo for _, _, photo in good]))  # type: ignore[misc]
                batch = WriteBatch()
                for ((pid, src), data, _), vec in zip(good, raw):
                    found = store.find_image(pid, src)
                    if found is None:
                        continue  # removed meanwhile
                    batch.remove_images.append((found[0], found[3]))
                    batch.add_images.append(ImageRecord(pid, src, hashlib.sha1(data).hexdigest(), domain, emb.signature, vec))
                store.write(batch)
                done += len(batch.add_images)
            bar.update(len(chunk))
    bar.close()
    logger.info("train-embedder %s: re-encoded %d image(s) through the tuned stage, %d unreadable", domain, done, failed)
    return done, failed


def train_store_embedder(
    store: CatalogueStore,
    pipeline: Pipeline,
    labelled: Path | None = None,
    *,
    domains: tuple[str, ...] = DOMAINS,
    holdout: float = 0.15,
    seed: int = 0,
    target_precision: float | None = None,
    tune_backbone: bool = True,
    progress: bool = False,
) -> dict[str, EmbedderReport]:
    """Train each domain's head on the store's catalogue (plus ``labelled`` photos).

    With ``tune_backbone``, each domain's backbone stage is tuned first
    (:func:`_tune_tail`) and its stored images re-encoded through it.
    Domains with no stored image are skipped. Labelled photos of products
    not in the store are skipped (counted in the report); unreadable ones too.
    ``target_precision``: the rank calibration's (default: the store's
    ``search.target_precision``). What the intent gate makes of the labelled
    photos is in each report's ``extra["gate"]`` (:func:`fit_stop_score`).
    """
    if target_precision is None:
        target_precision = pipeline.config.search.target_precision
    gate_scores: list[float] = []
    extras: dict[str, list[Any]] = {d: [] for d in domains}
    skipped = {"unknown_product": 0, "unreadable": 0}
    if labelled is not None:
        rows = read_labelled(Path(labelled))
        records = store.get_products(list({pid for _, pid in rows}))
        for file, pid in rows:
            rec = records.get(pid)
            if rec is None or rec.domain not in extras:
                skipped["unknown_product"] += 1
                continue
            extras[rec.domain].append((file, pid, rec.category or ""))
    reports: dict[str, EmbedderReport] = {}
    for domain in domains:
        if not store.count_images(domain):
            continue
        tail = {"tuned": False, "reason": "not asked"}
        if tune_backbone:
            tail = _tune_tail(store, pipeline, domain, extras[domain], holdout=holdout, seed=seed, progress=progress)
        raw, pids, cats = _stored(store, domain)
        if not len(raw):
            continue
        x_raw, x_pid, x_cat = _describe_labelled(pipeline, domain, extras[domain], skipped, gate_scores)
        if x_raw:
            extra = np.concatenate(x_raw)
            if extra.shape[1] != raw.shape[1]:
                raise StoreError(f"stored {domain} descriptors are {raw.shape[1]}-d but the configured model gives "
                                 f"{extra.shape[1]}-d: re-index the catalogue first")
            raw = np.concatenate([raw, extra])
        n_cat = len(pids)
        pids = np.concatenate([pids, np.array(x_pid, dtype=str)])
        cats = np.concatenate([cats, np.array(x_cat, dtype=str)])
        catalogue = np.arange(len(pids)) < n_cat
        has_cats = bool(np.all(cats != ""))
        head, report = train_embedder(raw, pids, domain=domain, seed=seed, categories=cats if has_cats else None,
                                      catalogue=catalogue, holdout=holdout, target_precision=target_precision,
                                      progress=progress)
        report.extra.update(skipped)
        report.tail = tail
        pipeline.set_head(domain, head)
        if report.calibration is not None:
            pipeline.set_calibration(domain, report.calibration)
        store.reproject(domain)
        if pipeline.artifacts is not None:
            report.path = str(pipeline.artifacts.head(domain))
            if report.calibration is not None:
                report.extra["calibration_path"] = str(pipeline.artifacts.calibration(domain))
        reports[domain] = report
    if not reports:
        raise StoreError("the store holds no catalogue image: index a catalogue before train-embedder")
    gate = fit_stop_score(gate_scores, pipeline.config.intent.stop_score)
    if gate is not None:
        for report in reports.values():
            report.extra["gate"] = gate
    return reports


#: The share of a shop's own labelled product photos its gate may stop at most (the stop score is
#: raised to their 99.5th percentile); and the highest stop score that may be fitted, so that a
#: photo the gate is all but certain of is still stopped (docs/decisions.md).
KEEP_LABELLED = 0.995
MAX_STOP_SCORE = 0.99


def fit_stop_score(non_product_scores: list[float], stop_score: float) -> dict[str, Any] | None:
    """The ``intent.stop_score`` a store's labelled product photos call for, or None without any.

    Every labelled photo shows one of the shop's products: a stop is a lost
    sale, so the score is raised (never lowered) until at most 1 − KEEP_LABELLED
    of them would be stopped, and no higher than MAX_STOP_SCORE.
    """
    if not non_product_scores:
        return None
    scores = np.asarray(non_product_scores, np.float64)
    needed = float(np.ceil(np.quantile(scores, KEEP_LABELLED) * 1000.0) / 1000.0)
    fitted = max(stop_score, min(MAX_STOP_SCORE, needed))
    return {
        "photos": int(len(scores)),
        "stop_score_before": stop_score,
        "stop_score": round(fitted, 3),
        "searched_before": round(float(np.mean(scores < stop_score)), 4),
        "searched": round(float(np.mean(scores < fitted)), 4),
    }
