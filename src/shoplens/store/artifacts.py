"""The model files a store holds: their names, paths and content hashes.

```
ROOT/config.json                        the resolved configuration (config.load_store_config reads it)
ROOT/models/head_<domain>.pt            a domain's trained projection head (shoplens.embed.heads)
ROOT/models/tail_<domain>.pt            a domain's tuned stride-32 backbone stage (shoplens.embed.tail)
ROOT/models/calibration_<domain>.json   a domain's rank-filter calibration (shoplens.embed.calibration)
ROOT/models/intent.pt                   the intent classifier train-intent made (shoplens.intent.trained)
```

Any other file under ``models/`` belongs to the store too: it is listed,
hashed, migrated and (on Milvus) stored like these. The store knows no
model, so this module deals in paths, bytes and hashes; each model class
loads and saves its own file at the path named here.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

#: The folder of a store's trained models, under its root.
MODELS_DIR = "models"
#: The saved configuration, under a store's root.
CONFIG_FILE = "config.json"
#: The trained intent classifier, in the models folder.
INTENT_FILE = "intent.pt"
#: What a file being written atomically is called until its rename: never listed.
TMP_SUFFIX = ".tmp"
#: The local-feature index (shoplens.local), under a store's root: derived from the photos, so not
#: migrated, but kept in the store by an engine whose clients share no folder (Milvus).
LOCAL_INDEX_DIR = "local"
#: The file of the local index naming its current files; replaced last, read first.
LOCAL_MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class Artifact:
    """One file of a store: its name (relative to the store's root, ``/``-separated), path and SHA-256."""

    name: str
    path: Path
    sha256: str


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: SHA-256 of files already read: path -> (what its stat said, the hash). A rewrite, atomic or not, changes the stat.
_HASHED: dict[str, tuple[tuple[int, int, int, int], str]] = {}


def sha256_file(path: Path) -> str:
    """The file's SHA-256; read once while it stays the same file (a server's periodic persist lists a
    local-feature index of gigabytes whose segments never change)."""
    st = path.stat()
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    known = _HASHED.get(str(path))
    if known is not None and known[0] == stamp:
        return known[1]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    hexdigest = digest.hexdigest()
    _HASHED[str(path)] = (stamp, hexdigest)
    return hexdigest


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_bytes(data)
    tmp.replace(path)


class StoreArtifacts:
    """The model files and the saved configuration of the store rooted at ``root``."""

    def __init__(self, root: Path, models_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.models_dir = Path(models_dir) if models_dir is not None else self.root / MODELS_DIR

    def head(self, domain: str) -> Path:
        return self.models_dir / f"head_{domain}.pt"

    def tail(self, domain: str) -> Path:
        return self.models_dir / f"tail_{domain}.pt"

    def calibration(self, domain: str) -> Path:
        return self.models_dir / f"calibration_{domain}.json"

    def intent(self) -> Path:
        return self.models_dir / INTENT_FILE

    def config(self) -> Path:
        return self.root / CONFIG_FILE

    def local_index(self) -> Path:
        return self.root / LOCAL_INDEX_DIR

    def path(self, name: str) -> Path:
        """The path of the file :meth:`all` names ``name`` (``models/…`` or ``config.json``)."""
        prefix = MODELS_DIR + "/"
        return self.models_dir / name[len(prefix):] if name.startswith(prefix) else self.root / name

    def all(self) -> list[Artifact]:
        """Every file the store holds now, models first (by name), then the configuration, each with its SHA-256.

        Files still being written (``*.tmp``) are left out.
        """
        out: list[Artifact] = []
        if self.models_dir.exists():
            for path in sorted(p for p in self.models_dir.rglob("*") if p.is_file() and not p.name.endswith(TMP_SUFFIX)):
                name = f"{MODELS_DIR}/{path.relative_to(self.models_dir).as_posix()}"
                out.append(Artifact(name, path, sha256_file(path)))
        config = self.config()
        if config.exists():
            out.append(Artifact(CONFIG_FILE, config, sha256_file(config)))
        return out

    def local_index_files(self) -> list[Artifact]:
        """The files of the local-feature index now (``local/…``), each with its SHA-256, its manifest last.

        The index replaces its manifest last when it saves, and names in it
        every file it reads, so whoever copies these files in this order, and
        the manifest last, copies one saved state. Files being written
        (``*.tmp``, ``.tmp-*``) are left out.
        """
        root = self.local_index()
        if not root.is_dir():
            return []
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(TMP_SUFFIX) and not p.name.startswith(".tmp")
                       and not any(part.startswith(".tmp") for part in p.relative_to(root).parts))
        files.sort(key=lambda p: p.relative_to(root).as_posix() == LOCAL_MANIFEST)
        return [Artifact(f"{LOCAL_INDEX_DIR}/{p.relative_to(root).as_posix()}", p, sha256_file(p)) for p in files]

    def copy_from(self, source: StoreArtifacts) -> list[str]:
        """Copy every file of ``source`` here (replacing files of the same name); returns their names."""
        copied: list[str] = []
        for artifact in source.all():
            target = self.path(artifact.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact.path, target)
            copied.append(artifact.name)
        return copied


__all__ = ["CONFIG_FILE", "INTENT_FILE", "LOCAL_INDEX_DIR", "LOCAL_MANIFEST", "MODELS_DIR", "Artifact", "StoreArtifacts", "sha256_bytes", "sha256_file", "write_atomic"]
