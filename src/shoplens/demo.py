"""``shoplens demo``: a public sample catalogue, indexed and searched.

The sample is the Grocery Store Dataset (Klasson et al., WACV 2019, MIT
licence): 81 products with a web-shop image each, and photos taken in stores.
It is downloaded once (progress bar, SHA-256 checked, cached under
``$SHOPLENS_CACHE`` or ``~/.cache/shoplens``), or read from an offline copy
with ``--from DIR`` (the upstream layout, or a folder with ``catalog.csv``
such as ``../shared/data/grocery``).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .errors import ShoplensError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    #: Expected SHA-256 of the download. ``None``: the hash of the first
    #: download is recorded next to it and every later use is checked against it.
    sha256: str | None
    licence: str


#: The upstream repository archive, pinned to one commit so its bytes never change.
GROCERY = Source(
    name="GroceryStoreDataset-b545e4c",
    url="https://github.com/marcusklasson/GroceryStoreDataset/archive/b545e4c5db0a77d9274bc7753eb409f83772a3a5.zip",
    sha256=None,
    licence="MIT (Klasson, Zhang, Kjellström: A Hierarchical Grocery Store Image Dataset with Visual and Semantic Labels, WACV 2019)",
)

#: Upstream files the demo needs (everything else in the archive is skipped).
_WANTED = ("dataset/classes.csv", "dataset/iconic-images-and-descriptions/", "dataset/test/", "dataset/train/")
#: Written when an extraction is complete; its text names what was extracted,
#: so a copy extracted by an older version (without the train photos) is redone.
_EXTRACTED = "ok: classes, iconic images, test, train\n"


def cache_dir() -> Path:
    return Path(os.environ.get("SHOPLENS_CACHE") or Path.home() / ".cache" / "shoplens")


def download(url: str, dest: Path, *, sha256: str | None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (atomically) unless a verified copy is there.

    The hash is checked on every use: against ``sha256`` when given, else
    against the hash recorded at the first download (``dest`` + ``.sha256``).
    """
    pinned = dest.with_name(dest.name + ".sha256")
    expected = sha256 or (pinned.read_text().strip() if pinned.exists() else None)
    if dest.exists():
        actual = _sha256(dest)
        if expected is None or actual == expected:
            return dest
        log.warning("%s: cached copy does not match its checksum; downloading again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        tmp.unlink(missing_ok=True)
        raise ShoplensError(f"cannot download {url}: {getattr(err, 'reason', err)} (use --from DIR for an offline copy)") from None
    actual = digest.hexdigest()
    if expected is not None and actual != expected:
        tmp.unlink(missing_ok=True)
        raise ShoplensError(f"{url}: checksum mismatch (expected sha256 {expected}, got {actual}); refusing the download")
    tmp.replace(dest)
    if expected is None:
        pinned.write_text(actual + "\n")
        log.info("recorded sha256 %s of %s", actual, dest.name)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def extract(archive: Path, dest: Path) -> Path:
    """Extract the files the demo needs; returns the folder holding ``dataset/``."""
    marker = dest / ".complete"
    if marker.exists() and marker.read_text() == _EXTRACTED:
        return dest
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename).parts
                if len(parts) < 2 or info.is_dir():
                    continue
                inner = PurePosixPath(*parts[1:])  # strip the "<repo>-<commit>/" prefix
                if ".." in inner.parts or inner.is_absolute() or not str(inner).startswith(_WANTED):
                    continue
                target = tmp / inner
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ShoplensError(f"{archive}: not a valid zip archive ({err})") from None
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    marker.write_text(_EXTRACTED)
    return dest


def catalogue_from_upstream(root: Path, out_csv: Path) -> Path:
    """Write a shoplens catalogue CSV from the upstream ``dataset/classes.csv``."""
    dataset = root / "dataset"
    classes = dataset / "classes.csv"
    if not classes.exists():
        raise ShoplensError(f"{root}: no dataset/classes.csv: not a Grocery Store Dataset copy")
    rows = []
    with open(classes, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            name = rec["Class Name (str)"]
            relative = PurePosixPath(rec["Iconic Image Path (str)"].lstrip("/"))
            image = dataset / relative
            top_level = relative.parts[1] if len(relative.parts) > 1 else ""  # Fruit / Vegetables / Packages
            if not image.exists():
                log.warning("%s: iconic image missing, product skipped", image)
                continue
            rows.append(
                {
                    "product_id": rec["Class ID (int)"],
                    "image": str(image.resolve()),
                    "title": name.replace("-", " "),
                    "category": rec["Coarse Class Name (str)"],
                    "top_level": top_level,
                }
            )
    if not rows:
        raise ShoplensError(f"{classes}: no product with an iconic image")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out_csv


def sample_root(source_dir: Path | None = None, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """The sample's folder: ``source_dir`` as given, or the downloaded and extracted archive."""
    if source_dir is not None:
        return Path(source_dir)
    archive = download(url or GROCERY.url, cache_dir() / f"{GROCERY.name}.zip", sha256=sha256 or GROCERY.sha256, progress=progress)
    return extract(archive, cache_dir() / GROCERY.name)


def sample_catalogue(source_dir: Path | None = None, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> tuple[Path, list[Path]]:
    """The sample catalogue CSV and a few store photos to search with."""
    root = sample_root(source_dir, url=url, sha256=sha256, progress=progress)
    if (root / "catalog.csv").exists():
        queries = sorted((root / "photos" / "val").rglob("*.jpg"))
        return root / "catalog.csv", queries[:: max(1, len(queries) // 4)][:4]
    if (root / "dataset" / "classes.csv").exists():
        return _from_upstream(root)
    raise ShoplensError(f"{root}: neither a catalog.csv nor an upstream dataset/classes.csv")


def sample_answers(root: Path, queries: Sequence[Path]) -> dict[str, str]:
    """The product each query photo shows (its product id), where the sample says: ``photos.csv``
    (column ``product_id``), or the upstream archive's ``.../<Class Name>/*.jpg`` folders."""
    wanted = {str(Path(q).resolve()) for q in queries}
    answers: dict[str, str] = {}
    if (root / "photos.csv").exists():
        with open(root / "photos.csv", newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                path = str((root / r["image"]).resolve())
                if path in wanted and r.get("product_id"):
                    answers[path] = r["product_id"]
    elif (root / "dataset" / "classes.csv").exists():
        with open(root / "dataset" / "classes.csv", newline="", encoding="utf-8") as f:
            ids = {rec["Class Name (str)"]: rec["Class ID (int)"] for rec in csv.DictReader(f)}
        answers = {q: ids[Path(q).parent.name] for q in wanted if Path(q).parent.name in ids}
    return answers


def sample_labelled(root: Path, out_csv: Path) -> Path:
    """A CSV (``image``, ``product_id``) of the sample's labelled *train* store photos.

    They stand for a shop's own labelled customer photos, the input of
    ``shoplens train-embedder --labelled``. Layouts: a folder with
    ``photos.csv`` (column ``split``), or the upstream archive, whose
    ``dataset/train/.../<Class Name>/*.jpg`` folders name the product.
    """
    rows: list[tuple[str, str]] = []
    if (root / "photos.csv").exists():
        with open(root / "photos.csv", newline="", encoding="utf-8") as f:
            rows = [(str((root / r["image"]).resolve()), r["product_id"]) for r in csv.DictReader(f) if r.get("split") == "train"]
    elif (root / "dataset" / "classes.csv").exists():
        with open(root / "dataset" / "classes.csv", newline="", encoding="utf-8") as f:
            ids = {rec["Class Name (str)"]: rec["Class ID (int)"] for rec in csv.DictReader(f)}
        photos = sorted((root / "dataset" / "train").rglob("*.jpg"))
        rows = [(str(p.resolve()), ids[p.parent.name]) for p in photos if p.parent.name in ids]
    if not rows:
        raise ShoplensError(f"{root}: no labelled train photos in the sample")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "product_id"])
        writer.writerows(rows)
    return out_csv


def _from_upstream(root: Path) -> tuple[Path, list[Path]]:
    csv_path = catalogue_from_upstream(root, cache_dir() / "demo" / f"{root.name}-catalog.csv")
    queries = sorted((root / "dataset" / "test").rglob("*.jpg"))
    return csv_path, queries[:: max(1, len(queries) // 4)][:4]
