"""What every router of the server shares: the lens, its settings, the key dependencies and the background work."""

# No `from __future__ import annotations`: FastAPI reads the key dependencies' annotations.

import logging
import threading
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from ..api import Shoplens
from ..config import DOMAINS
from ..imaging import DEFAULT_MAX_BYTES
from .guard import auth_problem, read_problem
from .metrics import Metrics
from .settings import ServerSettings
from .slots import SearchSlots
from .thumbnails import ThumbnailCache

log = logging.getLogger(__name__)


class Keys:
    """The write and read key as route dependencies: documented in the schema, enforced before the body is read by Guard."""

    def __init__(self, settings: ServerSettings) -> None:
        key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the write API key (or, for reads, the read key)")
        bearer = HTTPBearer(auto_error=False, description="the write API key (or, for reads, the read key) as a bearer token")

        def write_key(
            key: Annotated[str | None, Security(key_header)] = None,
            token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
        ) -> None:
            problem = auth_problem(settings, key if key is not None else (token.credentials if token else None))
            if problem is not None:
                status, _, message = problem
                raise HTTPException(status, message)

        def read_key(
            key: Annotated[str | None, Security(key_header)] = None,
            token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
        ) -> None:
            problem = read_problem(settings, key if key is not None else (token.credentials if token else None))
            if problem is not None:
                status, _, message = problem
                raise HTTPException(status, message)

        self.write_key, self.read_key = write_key, read_key
        #: ``dependencies=`` of a route that writes, and of one that reads the catalogue.
        self.writer = [Depends(write_key)]
        self.reader = [Depends(read_key)]


class ServerState:
    """What the handlers share: the lens, settings, keys, metrics, locks and background work."""

    def __init__(self, lens: Shoplens, settings: ServerSettings) -> None:
        self.lens = lens
        lens.defer_calibration = True  # refits run in _calibrate_loop, never inside a write request
        self.settings = settings
        self.keys = Keys(settings)
        self.search_slots = SearchSlots(settings.search_concurrency)  # first come, first served
        self.metrics = Metrics(self.counts)
        # Catalogue photos were accepted by size when indexed; the pixel and decoded-memory limits bound the decode.
        self.thumbnails = ThumbnailCache(lens.store, max_bytes=max(settings.max_upload_bytes, DEFAULT_MAX_BYTES),
                                         max_pixels=settings.max_pixels, max_decoded_bytes=settings.max_decoded_bytes)
        self.ready = threading.Event()
        self.warm_error: str | None = None
        self.dirty = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def counts(self) -> tuple[int, dict[str, int]]:
        store = self.lens.store
        return store.count_products(), {d: store.count_images(d) for d in DOMAINS}

    # -- background work ------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        for target, name in ((self._warm_up, "shoplens-warm-up"), (self._persist_loop, "shoplens-persist"),
                             (self._calibrate_loop, "shoplens-calibrate")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        self._threads.clear()
        self.persist()

    def persist(self) -> None:
        if self.dirty.is_set():
            self.dirty.clear()
            self.lens.store.persist()

    def _warm_up(self) -> None:
        """Load the models and the vector indexes once, so the first search is not slow."""
        try:
            self.thumbnails.sweep()  # photos changed or removed while the server was stopped
        except Exception:
            log.exception("cleaning the thumbnail cache failed")
        try:
            self.lens.warm_up()
            self.ready.set()
            log.info("models and indexes loaded: ready")
        except Exception as err:  # noqa: BLE001 - reported by /readyz
            self.warm_error = f"{type(err).__name__}: {err}"
            log.error("warm-up failed: %s", self.warm_error)

    def _persist_loop(self) -> None:
        while not self._stop.wait(self.settings.persist_interval_s):
            try:
                self.persist()
            except Exception:
                log.exception("saving the vector indexes failed")

    def _calibrate_loop(self) -> None:
        """Refit the rank filter's calibration in the background: once ready (a refit a stopped server left
        due), then ``calibrate_delay_s`` after each write that makes one due."""
        if self.lens.read_only:
            return
        while not self.ready.is_set():
            if self._stop.wait(0.5):
                return
        while True:
            self.lens.calibration_due.clear()  # a write from now on asks for the next refit
            try:
                fitted = self.lens.refresh_calibrations()
                if fitted:
                    log.info("rank filter refitted for %s", ", ".join(fitted))
            except Exception:
                log.exception("refitting the rank filter's calibration failed")
            while not self.lens.calibration_due.wait(timeout=0.5):
                if self._stop.is_set():
                    return
            if self._stop.wait(self.settings.calibrate_delay_s):
                return
