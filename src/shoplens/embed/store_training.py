"""``train-embedder`` on a store: its raw descriptors plus optional labelled photos.

The catalogue's raw descriptors come from the store (no backbone pass); only
the extra labelled photos are encoded. The trained head and its rank
calibration are saved in the store's models folder and the domain's vectors
are re-projected from the stored raw descriptors.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..catalog import read_labelled_csv
from ..config import DOMAINS
from ..errors import BadImageError, CatalogueError, StoreError
from .calibration import calibration_file
from .training import EmbedderReport, train_embedder

if TYPE_CHECKING:
    from ..pipeline import Pipeline
    from ..store import CatalogueStore

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
    pipeline: Pipeline, domain: str, todo: list[tuple[Path, str, str]], skipped: dict[str, int]
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Raw descriptors (in batches of 32), product ids and categories of the readable labelled photos.

    Decoded as the indexer decodes the catalogue (in parallel, to the
    pipeline's decode size); an unreadable photo is logged and counted.
    """
    from ..indexing import decode_all
    from ..pipeline import EncodingCache

    x_raw: list[np.ndarray] = []
    x_pid: list[str] = []
    x_cat: list[str] = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="shoplens-decode") as pool:
        for start in range(0, len(todo), 32):
            chunk = todo[start : start + 32]
            decoded = decode_all([(file, str(file)) for file, _, _ in chunk], pool, pipeline.decode_size)
            photos, keep = [], []
            for (_, pid, cat), result in zip(chunk, decoded):
                if isinstance(result, BadImageError):
                    logger.warning("train-embedder: skipping %s", result)
                    skipped["unreadable"] += 1
                else:
                    photos.append(result)
                    keep.append((pid, cat))
            if photos:
                x_raw.append(pipeline.describe(domain, EncodingCache(pipeline, photos)))
                x_pid += [p for p, _ in keep]
                x_cat += [c for _, c in keep]
    return x_raw, x_pid, x_cat


def train_store_embedder(
    store: CatalogueStore,
    pipeline: Pipeline,
    labelled: Path | None = None,
    *,
    domains: tuple[str, ...] = DOMAINS,
    holdout: float = 0.15,
    seed: int = 0,
    target_precision: float = 0.9,
    progress: bool = False,
) -> dict[str, EmbedderReport]:
    """Train each domain's head on the store's catalogue (plus ``labelled`` photos).

    Domains with no stored image are skipped. Labelled photos of products
    not in the store are skipped (counted in the report); unreadable ones too.
    """
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
        raw, pids, cats = _stored(store, domain)
        if not len(raw):
            continue
        x_raw, x_pid, x_cat = _describe_labelled(pipeline, domain, extras[domain], skipped)
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
        pipeline.set_head(domain, head)
        if report.calibration is not None:
            pipeline.set_calibration(domain, report.calibration)
        store.reproject(domain)
        if pipeline.models_dir is not None:
            report.path = str(pipeline.models_dir / f"head_{domain}.pt")
            if report.calibration is not None:
                report.extra["calibration_path"] = str(calibration_file(pipeline.models_dir, domain))
        reports[domain] = report
    if not reports:
        raise StoreError("the store holds no catalogue image: index a catalogue before train-embedder")
    return reports
