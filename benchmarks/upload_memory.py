"""Server RSS under concurrent uploads of tiny photos that decode huge (decompression-bomb-like, within the limits).

Indexes a small store (8 grocery catalogue photos of ../shared/data, or
generated photos when absent), then for each kind of photo starts
``shoplens serve`` on it afresh, warms it with one ordinary search, and fires
--uploads concurrent ``POST /search`` uploads of that photo. Each photo but
the control declares 6300 x 6300 pixels (39.7 M: under the server's 40 M-pixel
limit) and
is a few KB to a few hundred KB:

- ``png-1bit``: 1-bit black-and-white PNG (4.9 KB)
- ``png-palette``: 8-bit palette PNG
- ``png-grey``: 8-bit greyscale PNG
- ``png-rgb``: 8-bit RGB PNG
- ``gif``: GIF (palette)
- ``jpeg-grey``: greyscale JPEG
- ``png-small``: the control, a 394 x 394 1-bit PNG of the same colour (what
  ``png-1bit`` is reduced to for the bundled models' 384 px): what the
  searches themselves add, with no large decode

--rounds waves are sent, one after the other. Reported per kind: the
server's RSS before the uploads (VmRSS), its peak during them (VmHWM, reset
just before them through /proc/PID/clear_refs), its RSS 2 s after each wave
was answered, the answers' status codes, and the slowest answer.

    python benchmarks/upload_memory.py --json upload-memory.json
    # the same benchmark against another checkout's code (e.g. a worktree at an older commit):
    python benchmarks/upload_memory.py --src ../old/src
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_json_argument, free_port, git_commit, proc_status, write_result

REPO = Path(__file__).resolve().parents[1]
SIDE = 6300
KINDS = ("png-small", "png-1bit", "png-palette", "png-grey", "png-rgb", "gif", "jpeg-grey")
SMALL = 394


def data_root() -> Path:
    return Path(os.environ.get("SHOPLENS_DATA") or REPO.parent / "shared" / "data")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png(side: int, bit_depth: int, colour_type: int, channels: int = 1, palette: bytes = b"") -> bytes:
    """A PNG of one colour, written row by row: the benchmark itself never holds the decoded image."""
    row = b"\x00" + bytes((side * bit_depth * channels + 7) // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    extra = _chunk(b"PLTE", palette) if palette else b""
    header = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def photo(kind: str, side: int = SIDE) -> bytes:
    if kind == "png-small":
        return png(SMALL, 1, 0)
    if kind == "png-1bit":
        return png(side, 1, 0)
    if kind == "png-palette":
        return png(side, 8, 3, palette=bytes(range(256)) * 3)
    if kind == "png-grey":
        return png(side, 8, 0)
    if kind == "png-rgb":
        return png(side, 8, 2, channels=3)
    buf = io.BytesIO()
    img = Image.new("L" if kind == "jpeg-grey" else "P", (side, side), 0)
    img.save(buf, "JPEG" if kind == "jpeg-grey" else "GIF", **({"quality": 50} if kind == "jpeg-grey" else {}))
    return buf.getvalue()


def catalogue(folder: Path) -> Path:
    grocery = data_root() / "grocery"
    lines = ["product_id,image,category"]
    if (grocery / "catalog.csv").exists():
        with open(grocery / "catalog.csv", newline="", encoding="utf-8") as f:
            for r in list(csv.DictReader(f))[:8]:
                lines.append(f"g{r['product_id']},{grocery / r['image']},{r['category']}")
    else:
        rng = np.random.default_rng(0)
        for i in range(8):
            path = folder / f"s{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).resize((320, 240), Image.NEAREST).save(path, quality=90)
            lines.append(f"s{i},{path},c{i % 3}")
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    return folder / "catalog.csv"


def query_photo() -> bytes:
    grocery = data_root() / "grocery"
    if (grocery / "catalog.csv").exists():
        with open(grocery / "catalog.csv", newline="", encoding="utf-8") as f:
            return (grocery / next(csv.DictReader(f))["image"]).read_bytes()
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 40, 40)).save(buf, "JPEG")
    return buf.getvalue()


def start_server(store: Path, src: Path, log: Path, concurrency: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    for var in ("SHOPLENS_API_KEY", "SHOPLENS_READ_KEY"):
        env.pop(var, None)  # these uploads need no key
    argv = [sys.executable, "-m", "shoplens.cli", "serve", "--store", str(store), "--port", str(port), "--search-concurrency", str(concurrency)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited:\n" + log.read_text(errors="replace")[-3000:])
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not become ready:\n" + log.read_text(errors="replace")[-3000:])


def upload(url: str, data: bytes, name: str, out: list[tuple[int, float]], start: threading.Barrier) -> None:
    with httpx.Client(base_url=url, timeout=600) as client:
        start.wait()
        t = time.perf_counter()
        try:
            status = client.post("/search", files={"photo": (name, data, "application/octet-stream")}).status_code
        except httpx.HTTPError:
            status = -1
        out.append((status, time.perf_counter() - t))


def wave(url: str, data: bytes, kind: str, uploads: int) -> list[tuple[int, float]]:
    """``uploads`` concurrent searches with ``data``, released together: (status, seconds) of each."""
    answers: list[tuple[int, float]] = []
    barrier = threading.Barrier(uploads)
    threads = [threading.Thread(target=upload, args=(url, data, f"{kind}-{i}", answers, barrier)) for i in range(uploads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def measure(store: Path, src: Path, log: Path, kind: str, uploads: int, rounds: int, concurrency: int) -> dict[str, Any]:
    data = photo(kind)
    proc, url = start_server(store, src, log, concurrency)
    try:
        r = httpx.post(f"{url}/search", files={"photo": ("warm.jpg", query_photo(), "image/jpeg")}, timeout=600)
        r.raise_for_status()
        time.sleep(1.0)
        before = proc_status(proc.pid)["VmRSS"]
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        answers: list[tuple[int, float]] = []
        after: list[float] = []
        for _ in range(rounds):
            answers += wave(url, data, kind, uploads)
            time.sleep(2.0)
            after.append(proc_status(proc.pid)["VmRSS"])
        peak = proc_status(proc.pid)["VmHWM"]
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "kind": kind,
        "upload_bytes": len(data),
        "rss_before_mib": before,
        "peak_mib": peak,
        "peak_over_before_mib": round(peak - before, 1),
        "rss_2s_after_each_round_mib": after,
        "after_over_before_mib": [round(a - before, 1) for a in after],
        "statuses": statuses,
        "slowest_s": round(max(s for _, s in answers), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploads", type=int, default=8, help="concurrent uploads of each photo (default 8)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    ap.add_argument("--rounds", type=int, default=2, help="waves of uploads per server, one after the other (default 2)")
    ap.add_argument("--search-concurrency", type=int, default=2, help="the server's --search-concurrency (default 2, its default)")
    ap.add_argument("--src", type=Path, default=REPO / "src", help="the shoplens source folder the server runs from (default: this checkout's)")
    add_json_argument(ap, "upload_memory")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kinds: {', '.join(unknown)}")
    src = args.src.resolve()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-m", "shoplens.cli", "index", str(catalogue(tmp)), "--store", str(tmp / "store")],
                       env=env, check=True, capture_output=True)
        results = []
        for kind in kinds:
            row = measure(tmp / "store", src, tmp / "server.log", kind, args.uploads, args.rounds, args.search_concurrency)
            print(json.dumps(row), flush=True)
            results.append(row)
    out = {
        "uploads": args.uploads,
        "rounds": args.rounds,
        "search_concurrency": args.search_concurrency,
        "side": SIDE,
        "code": git_commit(src),  # the checkout the server ran from (--src), which may not be this one
        "runs": results,
    }
    print(f"{args.rounds} rounds of {args.uploads} concurrent uploads per kind, --search-concurrency {args.search_concurrency}, "
          f"code {out['code']}, {os.cpu_count()} cores")
    print("| photo | bytes | RSS before MiB | peak MiB (+) | 2 s after each round, + MiB | answers | slowest s |\n"
          "|---|---:|---:|---:|---:|---|---:|")
    for r in results:
        answers = ", ".join(f"{n}x {s}" for s, n in sorted(r["statuses"].items()))
        after = ", ".join(f"{a:+}" for a in r["after_over_before_mib"])
        print(f"| {r['kind']} | {r['upload_bytes']:,} | {r['rss_before_mib']} | {r['peak_mib']} ({r['peak_over_before_mib']:+}) | "
              f"{after} | {answers} | {r['slowest_s']} |")
    write_result("upload_memory", out, args.json)


if __name__ == "__main__":
    main()
