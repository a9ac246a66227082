"""Load test on loopback: concurrent searches while other clients add and delete products.

Starts ``shoplens serve`` on a fresh store (or uses --url), fills it with a
catalogue, then runs for --duration seconds: --searchers clients search with
photos, --writers clients add products (one photo each) and delete some of
their own. Reports requests per second and p50/p95/p99 latency per kind, the
errors (must be 0), the CPU time the server and the clients spent per request
(what the cores allow, however busy a shared machine is: wall-clock figures
are not), and afterwards checks that no product was lost or phantom:
the store holds exactly the initial catalogue + acknowledged adds - acknowledged
deletes, every surviving written product is found by its own photo, and no
deleted one is.

    python benchmarks/load.py --duration 60 --searchers 8 --writers 2

Photos: the grocery store photos of ../shared/data (SHOPLENS_DATA) as queries
and the catalogue when present, generated ones otherwise. The server runs the
bundled models with the intent gate off (--no-intent) so that every search and
every generated photo goes through the whole pipeline (the worst case).

--gate keeps the intent gate on and mixes non-product photos (the wallpapers
of ../shared/data/nonproduct) into the queries: the server's per-intent
timings show what the gate saves. Written products are then checked in
process, with the gate off, after the server stopped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_json_argument, cpu_seconds, free_port, percentile, write_result

REPO = Path(__file__).resolve().parents[1]
KEY = "load-test-key-" + "0123456789abcdef"


def data_root() -> Path:
    return Path(os.environ.get("SHOPLENS_DATA") or REPO.parent / "shared" / "data")


def generated(seed: int, size: tuple[int, int] = (200, 160)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1] // 10 + 1, size[0] // 10 + 1, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").resize(size, Image.NEAREST).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)

    def reset(self) -> None:
        with self.lock:
            self.latency.clear()
            self.errors.clear()

    def record(self, kind: str, seconds: float, error: str | None = None) -> None:
        with self.lock:
            if error is None:
                self.latency[kind].append(seconds)
            else:
                self.errors[kind].append(error)


def start_server(store: Path, log: Path, search_concurrency: int, gate: bool, settings: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "SHOPLENS_API_KEY": KEY, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "shoplens.cli", "serve", "--store", str(store), "--create", "--port", str(port),
            "--search-concurrency", str(search_concurrency)] + ([] if gate else ["--no-intent"])
    for setting in settings:
        argv += ["--set", setting]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become ready")


def non_product_photos() -> list[bytes]:
    folder = data_root() / "nonproduct"
    if not (folder / "images.csv").exists():
        raise SystemExit(f"--gate needs the non-product photos of {folder}")
    with open(folder / "images.csv", newline="", encoding="utf-8") as f:
        return [(folder / r["image"]).read_bytes() for r in csv.DictReader(f)]


def photos(limit: int) -> tuple[list[tuple[str, bytes, str]], list[bytes], str]:
    """(catalogue products (id, photo, category), query photos, where they come from)."""
    grocery = data_root() / "grocery"
    if (grocery / "catalog.csv").exists() and (grocery / "photos.csv").exists():
        with open(grocery / "catalog.csv", newline="", encoding="utf-8") as f:
            catalogue = [(f"g{r['product_id']}", (grocery / r["image"]).read_bytes(), r["category"]) for r in csv.DictReader(f)]
        with open(grocery / "photos.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        rng = random.Random(0)
        rng.shuffle(rows)
        train = [r for r in rows if r["split"] == "train"][: max(0, limit - len(catalogue))]
        catalogue += [(f"t{i}", (grocery / r["image"]).read_bytes(), f"coarse-{r['coarse_id']}") for i, r in enumerate(train)]
        queries = [(grocery / r["image"]).read_bytes() for r in rows if r["split"] == "val"][:200]
        return catalogue[:limit], queries, "grocery photos (../shared/data)"
    catalogue = [(f"s{i}", generated(i), f"c{i % 7}") for i in range(limit)]
    return catalogue, [generated(10_000 + i) for i in range(100)], "generated photos"


def fill(url: str, catalogue: list[tuple[str, bytes, str]]) -> float:
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(0, len(catalogue), 32):
            chunk = catalogue[i : i + 32]
            products = [{"product_id": pid, "category": cat, "domain": "other_product", "photos": [f"{pid}.jpg"]} for pid, _, cat in chunk]
            files = [("photos", (f"{pid}.jpg", data, "image/jpeg")) for pid, data, _ in chunk]
            r = client.post("/products/batch", data={"products": json.dumps(products)}, files=files, headers={"X-API-Key": KEY})
            r.raise_for_status()
    return time.perf_counter() - start


def searcher(url: str, queries: list[bytes], stop: threading.Event, stats: Stats, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            data = rng.choice(queries)
            start = time.perf_counter()
            try:
                r = client.post("/search", files={"photo": ("q.jpg", data, "image/jpeg")}, data={"top_k": "10"})
                error = None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:120]}"
            except httpx.HTTPError as err:
                error = f"{type(err).__name__}: {err}"
            stats.record("search", time.perf_counter() - start, error)


class Writer:
    def __init__(self, name: str, url: str, stats: Stats, seed: int) -> None:
        self.name, self.url, self.stats, self.seed = name, url, stats, seed
        self.added: dict[str, bytes] = {}  # acknowledged adds
        self.deleted: set[str] = set()  # acknowledged deletes

    def run(self, stop: threading.Event) -> None:
        rng = random.Random(self.seed)
        headers = {"X-API-Key": KEY}
        n = 0
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not stop.is_set():
                alive = sorted(set(self.added) - self.deleted)
                if alive and rng.random() < 0.4:
                    pid = rng.choice(alive)
                    start = time.perf_counter()
                    try:
                        r = client.delete(f"/products/{pid}", headers=headers)
                        error = None if r.status_code == 204 else f"HTTP {r.status_code}: {r.text[:120]}"
                    except httpx.HTTPError as err:
                        error = f"{type(err).__name__}: {err}"
                    self.stats.record("delete", time.perf_counter() - start, error)
                    if error is None:
                        self.deleted.add(pid)
                    continue
                pid = f"{self.name}-{n}"
                data = generated(self.seed * 100_000 + n)
                n += 1
                fields = {"product_id": pid, "title": f"load {pid}", "category": self.name, "domain": "other_product", "metadata": {"n": n}}
                start = time.perf_counter()
                try:
                    r = client.post("/products", data={"product": json.dumps(fields)}, files=[("photos", ("p.jpg", data, "image/jpeg"))], headers=headers)
                    error = None if r.status_code == 201 else f"HTTP {r.status_code}: {r.text[:120]}"
                except httpx.HTTPError as err:
                    error = f"{type(err).__name__}: {err}"
                self.stats.record("add", time.perf_counter() - start, error)
                if error is None:
                    self.added[pid] = data


def verify(url: str, initial: set[str], writers: list[Writer], search_over_http: bool = True) -> dict[str, Any]:
    """The store against what was acknowledged; every surviving write found by its photo, no deleted one."""
    expected = set(initial)
    for w in writers:
        expected |= set(w.added) - w.deleted
    listed: set[str] = set()
    with httpx.Client(base_url=url, timeout=120) as client:
        offset = 0
        while page := client.get("/products", params={"offset": offset, "limit": 500}).json()["items"]:
            listed |= {p["product_id"] for p in page}
            offset += len(page)
        lost, phantom = sorted(expected - listed), sorted(listed - expected)
        unsearchable: list[str] = []
        resurrected: list[str] = []
        for w in writers if search_over_http else []:
            for pid, data in w.added.items():
                # A deleted product must not come back even where a filter admits it alone; a surviving one
                # must come first among the whole catalogue. (Not by its distance: a margin calibration
                # puts the hit of a one-product filter at the threshold, whatever its raw distance.)
                form = {"filter": f"product_id={pid}", "top_k": "1"} if pid in w.deleted else {"top_k": "1"}
                r = client.post("/search", files={"photo": ("v.jpg", data, "image/jpeg")}, data=form).json()
                hits = r["regions"][0]["results"] if r.get("regions") else []
                if pid in w.deleted and hits:
                    resurrected.append(pid)
                if pid not in w.deleted and not (hits and hits[0]["product_id"] == pid):
                    unsearchable.append(pid)
        ready = client.get("/readyz").json()
    return {
        "expected": len(expected),
        "listed": len(listed),
        "lost": lost,
        "phantom": phantom,
        "unsearchable": unsearchable,
        "deleted_but_found": resurrected,
        "readyz_products": ready.get("products"),
    }


def verify_in_process(store: Path, writers: list[Writer]) -> dict[str, list[str]]:
    """Search every written product's photo in the stopped store, with the gate off."""
    sys.path.insert(0, str(REPO / "src"))
    from shoplens import open_store

    unsearchable, resurrected = [], []
    with open_store(store, **{"intent.enabled": False}) as lens:
        for w in writers:
            for pid, data in w.added.items():  # as verify() does over HTTP
                result = lens.search_one(data, top_k=1, filters=f"product_id={pid}" if pid in w.deleted else None)
                hits = result.regions[0].results if result.regions else []
                if pid in w.deleted and hits:
                    resurrected.append(pid)
                if pid not in w.deleted and not (hits and hits[0].product_id == pid):
                    unsearchable.append(pid)
    return {"unsearchable": unsearchable, "deleted_but_found": resurrected}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an already running server (its key in SHOPLENS_API_KEY); default: start one on a fresh store")
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the measured ones")
    p.add_argument("--searchers", type=int, default=8)
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--catalogue", type=int, default=300, help="products in the store before the load")
    p.add_argument("--search-concurrency", type=int, default=2)
    p.add_argument("--gate", action="store_true", help="intent gate on, non-product photos among the queries")
    add_json_argument(p, "load")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="configuration of the started server (repeatable)")
    args = p.parse_args()

    global KEY
    proc = None
    tmp = Path(tempfile.mkdtemp(prefix="shoplens-load-"))
    load_before = os.getloadavg()
    if args.url:
        url, KEY = args.url, os.environ.get("SHOPLENS_API_KEY", KEY)
    else:
        proc, url = start_server(tmp / "store", tmp / "server.log", args.search_concurrency, args.gate, args.set)
    if args.gate and proc is None:
        raise SystemExit("--gate starts its own server (no --url)")
    try:
        catalogue, queries, source = photos(args.catalogue)
        if args.gate:
            extra = non_product_photos()
            queries = queries[: 3 * len(extra)] + extra  # a quarter of the queries are not product photos
            source += f" + {len(extra)} non-product photos"
        fill_s = fill(url, catalogue) if catalogue else 0.0
        initial = {pid for pid, _, _ in catalogue}
        stats, stop = Stats(), threading.Event()
        writers = [Writer(f"w{i}", url, stats, seed=i + 1) for i in range(args.writers)]
        threads = [threading.Thread(target=searcher, args=(url, queries, stop, stats, i)) for i in range(args.searchers)]
        threads += [threading.Thread(target=w.run, args=(stop,)) for w in writers]
        for t in threads:
            t.start()
        # The first seconds after the fill are not measured: background work (calibration, the local
        # features' sync, OpenVINO's fixed-shape compilations) still runs then.
        time.sleep(args.warmup)
        warmup_errors = {k: list(v) for k, v in stats.errors.items()}
        stats.reset()
        server_cpu = cpu_seconds(proc.pid) if proc is not None else None
        client_cpu = time.process_time()
        start = time.perf_counter()
        time.sleep(args.duration)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        client_cpu = time.process_time() - client_cpu
        if proc is not None and server_cpu is not None:
            server_cpu = cpu_seconds(proc.pid) - server_cpu
        check = verify(url, initial, writers, search_over_http=not args.gate)
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    if args.gate:
        check.update(verify_in_process(tmp / "store", writers))
    load_after = os.getloadavg()

    rows = {}
    for kind in ("search", "add", "delete"):
        lat = stats.latency.get(kind, [])
        rows[kind] = {
            "ok": len(lat),
            "errors": len(stats.errors.get(kind, [])),
            "per_s": round(len(lat) / elapsed, 2),
            "p50_ms": round(percentile(lat, 50) * 1000, 1),
            "p95_ms": round(percentile(lat, 95) * 1000, 1),
            "p99_ms": round(percentile(lat, 99) * 1000, 1),
        }
    requests = sum(r["ok"] + r["errors"] for r in rows.values())
    # CPU time per request: what the machine's cores allow, whatever else shares them (wall times do not).
    cpu_ms = {
        "server_per_request": round(1000 * server_cpu / requests, 1) if server_cpu is not None and requests else None,
        "clients_per_request": round(1000 * client_cpu / requests, 1) if requests else None,
    }
    steps = {}
    for line in metrics.splitlines():
        if line.startswith("shoplens_search_step_seconds_sum"):
            step = line.split('step="')[1].split('"')[0]
            steps.setdefault(step, {})["sum"] = float(line.rsplit(" ", 1)[1])
        if line.startswith("shoplens_search_step_seconds_count"):
            step = line.split('step="')[1].split('"')[0]
            steps.setdefault(step, {})["count"] = float(line.rsplit(" ", 1)[1])
    step_ms = {k: round(1000 * v["sum"] / v["count"], 1) for k, v in steps.items() if v.get("count")}
    by_intent: dict[str, dict[str, float]] = {}
    for line in metrics.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"shoplens_search_duration_seconds_{part}"):
                intent = line.split('intent="')[1].split('"')[0]
                by_intent.setdefault(intent, {})[part] = float(line.rsplit(" ", 1)[1])
    intent_ms = {k: {"searches": int(v["count"]), "mean_ms": round(1000 * v["sum"] / v["count"], 1)} for k, v in by_intent.items() if v.get("count")}
    out = {
        "duration_s": round(elapsed, 1),
        "searchers": args.searchers,
        "writers": args.writers,
        "catalogue": len(catalogue),
        "photos": source,
        "fill_s": round(fill_s, 1),
        "requests": rows,
        "cpu_ms": cpu_ms,
        "mean_server_step_ms": step_ms,
        "by_intent": intent_ms,
        "verify": check,
        "cpu_cores": os.cpu_count(),
        "loadavg_before_after": [round(load_before[0], 1), round(load_after[0], 1)],
        "error_samples": {k: v[:3] for k, v in stats.errors.items()},
        "warmup_errors": {k: v[:3] for k, v in warmup_errors.items()},
    }
    print(f"{elapsed:.0f} s, {args.searchers} searchers + {args.writers} writers, {len(catalogue)} products to start ({source}), "
          f"{os.cpu_count()} cores, load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print("| kind | ok | errors | per s | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|")
    for kind, r in rows.items():
        print(f"| {kind} | {r['ok']} | {r['errors']} | {r['per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} |")
    print(f"CPU ms per request: server {cpu_ms['server_per_request']}, clients {cpu_ms['clients_per_request']}")
    print("mean server time per search step (ms):", step_ms)
    print("searches by intent (mean server time):", intent_ms)
    v = check
    print(f"after: {v['listed']} products listed, {v['expected']} expected; lost {len(v['lost'])}, phantom {len(v['phantom'])}, "
          f"unsearchable {len(v['unsearchable'])}, deleted but found {len(v['deleted_but_found'])}")
    if any(warmup_errors.values()):
        print("errors during the warm-up:", {k: len(v) for k, v in warmup_errors.items()})
    write_result("load", out, args.json)
    failed = any(r["errors"] for r in rows.values()) or any(warmup_errors.values()) or v["lost"] or v["phantom"] or v["unsearchable"] or v["deleted_but_found"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
