"""Search slots: at most N searches at once, served first come first served; concurrent searches answer as sequential ones."""

# ruff: noqa: I001 - serverutil comes first: it skips the module without the [server] extra
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .serverutil import encode, picture  # first: skips this module without the [server] extra

from fastapi.testclient import TestClient

from shoplens import Shoplens
from shoplens.server import ServerSettings, create_app
from shoplens.server.slots import SearchSlots

from . import test_engine  # noqa: F401  (registers the test-* classifiers and detector)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_waiters_are_served_in_the_order_they_came() -> None:
    slots = SearchSlots(1)
    slots.acquire()
    served: list[int] = []

    def wait_turn(i: int) -> None:
        with slots:
            served.append(i)

    threads = []
    for i in range(6):
        t = threading.Thread(target=wait_turn, args=(i,))
        t.start()
        threads.append(t)
        wait_until(lambda n=i + 1: slots.waiting == n)  # the next one comes after this one waits
    slots.release()
    for t in threads:
        t.join(timeout=10)
    assert served == list(range(6))
    assert slots.waiting == 0 and slots.acquire(blocking=False)


def test_a_freed_slot_goes_to_the_waiter_not_to_a_newcomer() -> None:
    """threading.Semaphore lets a caller that just arrived take the slot a waiter was woken for."""
    slots = SearchSlots(1)
    slots.acquire()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (slots.acquire(), got.set()))
    waiter.start()
    wait_until(lambda: slots.waiting == 1)
    slots.release()
    assert not slots.acquire(blocking=False)  # handed over: the newcomer finds no free slot
    assert got.wait(10)
    waiter.join(timeout=10)
    slots.release()
    assert slots.acquire(blocking=False)
    slots.release()
    with pytest.raises(ValueError, match="released more often"):
        slots.release()
    with pytest.raises(ValueError):
        SearchSlots(0)


def test_at_most_n_run_at_once() -> None:
    slots = SearchSlots(2)
    lock = threading.Lock()
    inside, most = 0, 0

    def work(_: int) -> None:
        nonlocal inside, most
        with slots:
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.002)
            with lock:
                inside -= 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(64)))
    assert most == 2 and slots.waiting == 0


def without_timings(body: Any) -> Any:
    """The answer without what the clock says (``timings_ms``, the local step's ``query_ms`` ...)."""
    if isinstance(body, dict):
        return {k: without_timings(v) for k, v in body.items() if not k.endswith("_ms")}
    if isinstance(body, list):
        return [without_timings(v) for v in body]
    return body


def test_concurrent_searches_answer_as_sequential_ones(tmp_path: Path) -> None:
    """Eight clients at once on two slots get, photo for photo, the answers they get one at a time."""
    rows = ["product_id,image,title,category,domain"]
    for i in range(8):
        (tmp_path / f"p{i}.png").write_bytes(encode(picture(i)))
        rows.append(f"p{i},p{i}.png,Product {i},{'red' if i < 4 else 'blue'},other_product")
    (tmp_path / "catalog.csv").write_text("\n".join(rows) + "\n")
    queries = [encode(picture(i).rotate(8 * i + 5)) for i in range(16)]
    loose = {"search.rank_filter": False, "search.entropy_filter": False, "search.category_order": False}
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product"}, **loose) as lens:
        lens.index(tmp_path / "catalog.csv")
        with TestClient(create_app(lens, ServerSettings(search_concurrency=2))) as c:

            def ask(data: bytes) -> dict[str, Any]:
                r = c.post("/search", files={"photo": ("q.png", data, "image/png")}, data={"top_k": "5"})
                assert r.status_code == 200, r.text
                return without_timings(r.json())

            sequential = [ask(q) for q in queries]
            with ThreadPoolExecutor(8) as pool:
                concurrent = list(pool.map(ask, queries * 2))
    assert concurrent == sequential * 2
    assert all(body["regions"] and body["regions"][0]["results"] for body in sequential)
