"""Crash safety: kill -9 during ``shoplens index``, restart, nothing lost or half-written.

A subprocess indexes a few hundred generated images; it is killed (SIGKILL)
at random points, several times. After each kill the store is reopened and
checked: vectors per domain equal images per domain, every product whose
write was acknowledged (the indexer's "committed" log line) is stored with
all its listed images and is found by search, and nothing phantom remains
(no vector without its image, no product without its images). Re-running
the same command completes the job.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoplens import open_store
from shoplens.config import DOMAINS

from .conftest import REPO, make_image

N_PRODUCTS = 160
FLAGS = ["--set", "embed.other_product.input_size=64", "--set", "embed.apparel.input_size=64"]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """160 products (176 images): every 10th with two photos; a quarter apparel."""
    root = tmp_path_factory.mktemp("durable")
    rows, expected = [], {}
    for i in range(N_PRODUCTS):
        pid = f"p{i:03d}"
        photos = [f"img/{pid}.png"] + ([f"img/{pid}b.png"] if i % 10 == 0 else [])
        for j, rel in enumerate(photos):
            make_image(root / rel, seed=1000 + 2 * i + j, size=(64, 48))
            rows.append({"product_id": pid, "image": rel, "title": f"T{i}", "category": f"c{i % 5}", "domain": "apparel" if i % 4 == 0 else "other_product"})
        expected[pid] = set(photos)
    with open(root / "catalog.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "catalog.csv", expected


def _index_command(catalog: Path, store: Path | str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "shoplens.cli", "-v", "index", str(catalog), "--store", str(store), "--no-progress", *FLAGS, *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_and_kill(cmd: list[str], log: Path, after_commits: int, extra_delay: float) -> set[str]:
    """Start indexing, SIGKILL it after ``after_commits`` acknowledged chunks (+ a random delay); the acknowledged products."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=_env(), cwd=REPO)
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if log.read_text().count("committed ") >= after_commits:
                break
            time.sleep(0.02)
        time.sleep(extra_delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    acked: set[str] = set()
    for line in log.read_text().splitlines():
        if " committed " in line and ": " in line.split("committed", 1)[1]:
            acked.update(line.rsplit(": ", 1)[1].split())
    return acked


def _check(store_dir: Path | str, catalog: Path, expected: dict[str, set[str]], acked: set[str], extra: list[str]) -> int:
    """The store after a crash: consistent, every acknowledged product complete and searchable."""
    flags = {"embed.other_product.input_size": 64, "embed.apparel.input_size": 64}
    if extra:
        flags["store.index"] = extra[1].split("=", 1)[1]
    with open_store(store_dir, **flags) as lens:
        store = lens.store
        stored = {p.product_id for p in store.iter_products()}
        assert acked <= stored, f"acknowledged but lost: {sorted(acked - stored)[:5]}"
        for pid in stored:  # never half-written: a product has exactly its listed images
            assert {Path(src).relative_to(catalog.parent).as_posix() for _, _, src in store.product_images(pid)} == expected[pid], pid
        for domain in DOMAINS:
            # as many vectors as images, and every image finds itself: the same ids, no phantom vector
            assert store.count_vectors(domain) == store.count_images(domain)
            for ids, raw in store.iter_raw(domain):
                _, found = store.search(domain, lens.pipeline.project(domain, raw), 1)
                assert (found[:, 0] == ids).all()
        return len(stored)


HAS_MILVUS = importlib.util.find_spec("pymilvus") is not None and importlib.util.find_spec("milvus_lite") is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    "engine, extra",
    [
        ("embedded", []),
        ("embedded", ["--set", "store.index=ivfflat"]),
        pytest.param("milvus-lite", [], marks=pytest.mark.skipif(not HAS_MILVUS, reason="pymilvus/milvus-lite not installed")),
    ],
    ids=["auto", "ivfflat", "milvus-lite"],
)
def test_kill_during_index_loses_nothing(tmp_path: Path, catalogue: tuple[Path, dict[str, set[str]]], engine: str, extra: list[str]) -> None:
    catalog, expected = catalogue
    store: Path | str = tmp_path / "store" if engine == "embedded" else f"milvus-lite:{tmp_path / 'store.db'}"
    rng = random.Random(len(extra) + len(engine))
    cmd = _index_command(catalog, store, extra)
    counts = []
    for attempt in range(3 if engine == "embedded" and not extra else 2):
        # The first kill follows the first commit at once (three chunks in all); later ones land at random.
        after, delay = (1, 0.0) if attempt == 0 else (rng.randint(1, 2), rng.uniform(0.0, 0.6))
        acked = _run_and_kill(cmd, tmp_path / f"run{attempt}.log", after_commits=after, extra_delay=delay)
        counts.append(_check(store, catalog, expected, acked, extra))
    # Each run resumes where the last one died, so only the first kill is sure to land mid-catalogue.
    assert counts[0] < N_PRODUCTS, "the first kill came too late to test anything"
    done = subprocess.run(cmd + ["--json"], check=False, capture_output=True, text=True, env=_env(), cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _check(store, catalog, expected, set(expected), extra) == N_PRODUCTS
