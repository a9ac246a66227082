"""``POST /imports`` and ``GET /imports/{id}``: a catalogue CSV indexed as a background job.

The CSV is uploaded; its ``image`` column names photos on the server's
machine, under the folder the server allows (``--import-root DIR``: a path is
resolved, symlinks and ``..`` included, and refused outside it), or URLs under
the fetch allow-list (``--allow-url``, the same rules as ``POST /search/url``).
The rows are checked when the CSV arrives (a row naming a photo outside the
root is that row's error, reported like any bad catalogue row); the job then
runs in one background thread through :meth:`shoplens.Shoplens.index`, the
code ``shoplens index`` runs, one job at a time in the order they came. A job
lives in the server's memory: a restart forgets it (what it had indexed
stays: each chunk is committed as it is written).
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name local settings.

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..catalog import CatalogueRow, check_domain, read_catalogue_bytes
from ..errors import CatalogueError, NotFoundError, ShoplensError
from .fetch import allowed, fetch
from .models import ErrorBody

log = logging.getLogger(__name__)

#: Finished jobs kept for ``GET /imports/{id}`` (the oldest are forgotten first).
KEEP_FINISHED = 100
#: Jobs that may wait behind the running one.
MAX_QUEUED = 16

JobState = Literal["queued", "running", "done", "failed"]


class ImportStatus(BaseModel):
    """An import job, as ``GET /imports/{id}`` reports it."""

    id: str
    state: JobState = Field(description="queued, running, done or failed")
    phase: Literal["fetching", "indexing"] | None = Field(default=None, description="while running: fetching URL photos, or indexing")
    catalogue: str = Field(description="the uploaded file's name")
    rows_total: int = Field(description="rows of the CSV")
    rows_done: int = Field(description="rows handled so far: indexed, or reported as failed or duplicate; a chunk at a time")
    images_total: int | None = Field(default=None, description="images to index (rows less failed and duplicate ones), once known")
    images_done: int = 0
    created_at: float = Field(description="Unix time the job was accepted")
    started_at: float | None = None
    finished_at: float | None = None
    report: dict[str, Any] | None = Field(default=None, description="when done: the indexing report, as `shoplens index --json` prints it")
    error: str | None = Field(default=None, description="when failed: why")


class _Stopped(ShoplensError):
    """The server is stopping: the running import ends between two chunks."""


class _Job:
    def __init__(self, name: str, rows: list[CatalogueRow], domain: str | None) -> None:
        self.status = ImportStatus(id=uuid.uuid4().hex, state="queued", catalogue=name, rows_total=len(rows), rows_done=0,
                                   created_at=time.time())
        self.rows = rows
        self.domain = domain


class Imports:
    """The jobs of one server, and the thread that runs them one at a time."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._jobs: collections.OrderedDict[str, _Job] = collections.OrderedDict()
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def submit(self, job: _Job) -> ImportStatus:
        with self._lock:
            if self._stopping:
                raise _Stopped("the server is stopping: send the import again once it has restarted")
            if len(self._queue) >= MAX_QUEUED:
                raise _Busy(f"{MAX_QUEUED} imports are already waiting: send this one when they are done")
            self._jobs[job.status.id] = job
            self._queue.append(job)
            self._forget_old()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shoplens-imports", daemon=True)
                self._thread.start()
            self._wake.notify()
            return job.status.model_copy()

    def get(self, job_id: str) -> ImportStatus:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFoundError(f"no import {job_id!r} (jobs are kept in memory: a restart forgets them)")
            return job.status.model_copy()

    def stop(self) -> None:
        """Fail the queued jobs, end the running one between two chunks and wait for it."""
        with self._lock:
            self._stopping = True
            for job in self._queue:
                self._finish(job, "failed", error="the server stopped before this import ran")
            self._queue.clear()
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=300)

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status.state in ("done", "failed")]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[key]

    def _finish(self, job: _Job, state: JobState, *, report: dict[str, Any] | None = None, error: str | None = None) -> None:
        job.status = job.status.model_copy(update={"state": state, "phase": None, "finished_at": time.time(), "report": report,
                                                   "error": error, **({"rows_done": job.status.rows_total} if state == "done" else {})})
        job.rows = []

    def _update(self, job: _Job, **fields: Any) -> None:
        with self._lock:
            job.status = job.status.model_copy(update=fields)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue:
                    self._thread = None
                    return
                job = self._queue.popleft()
                job.status = job.status.model_copy(update={"state": "running", "started_at": time.time()})
            try:
                report = self._index(job)
            except Exception as err:  # noqa: BLE001 - the job's status says why
                if not isinstance(err, ShoplensError):
                    log.exception("import %s failed", job.status.id)
                with self._lock:
                    self._finish(job, "failed", error=str(err) or type(err).__name__)
            else:
                with self._lock:
                    self._finish(job, "done", report=report)

    def _index(self, job: _Job) -> dict[str, Any]:
        lens, settings = self.state.lens, self.state.settings
        rows = job.rows
        urls = [i for i, r in enumerate(rows) if r.error is None and _is_url(r.image)]
        if urls:
            self._update(job, phase="fetching")
            for i in urls:
                if self._stopping:
                    raise _Stopped("the server stopped during this import")
                rows[i] = _fetched(lens, settings, rows[i])
        self._update(job, phase="indexing")
        skipped = [0]

        def progress(done: int, total: int) -> None:
            if self._stopping:
                raise _Stopped("the server stopped during this import: what it had indexed by then is kept")
            skipped[0] = job.status.rows_total - total
            self._update(job, images_total=total, images_done=done, rows_done=skipped[0] + done)

        report = lens.index(rows, domain=job.domain, on_progress=progress)
        self.state.dirty.set()
        self.state.metrics.writes.labels("import").inc(report.products)
        return {**report.to_dict(), "products_in_store": lens.count_products()}


class _Busy(ShoplensError):
    """Too many imports waiting."""


def _is_url(cell: str) -> bool:
    return "://" in cell


def _fetched(lens: Any, settings: Any, row: CatalogueRow) -> CatalogueRow:
    """The row with its URL's photo fetched and kept under ``<store>/photos/`` (or with the fetch's error)."""
    try:
        data = fetch(row.image, settings.url_allowlist, max_bytes=settings.max_upload_bytes, timeout=settings.url_timeout_s)
        path = lens.save_photo(data, name=row.image, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
    except ShoplensError as err:
        return replace(row, error=f"{row.image}: {err}")
    return replace(row, image=str(path))


def image_resolver(root: Path | None, url_allowlist: tuple[str, ...]) -> Any:
    """``image(cell)`` for :func:`read_catalogue_bytes`: a path under ``root`` (resolved) or an allow-listed URL."""
    real_root = Path(os.path.realpath(root)) if root is not None else None

    def image(cell: str) -> str:
        if _is_url(cell):
            if not url_allowlist:
                raise CatalogueError(f"image {cell[:200]!r}: this server fetches no URLs (start it with --allow-url PREFIX)")
            try:
                return allowed(cell, url_allowlist)
            except ShoplensError as err:
                raise CatalogueError(f"image {cell[:200]!r}: {err}") from None
        if real_root is None:
            raise CatalogueError(f"image {cell[:200]!r}: this server imports no files (start it with --import-root DIR)")
        path = Path(cell)
        real = Path(os.path.realpath(path if path.is_absolute() else real_root / path))
        if not real.is_relative_to(real_root):
            raise CatalogueError(f"image {cell[:200]!r} is outside the import folder ({real_root}), symlinks and '..' resolved")
        return str(real)

    return image


def register(app: FastAPI, state: Any, writer: Sequence[Any]) -> None:
    """Add ``POST /imports`` and ``GET /imports/{id}`` to ``app`` (``state``: the server's ServerState)."""
    settings = state.settings
    imports = Imports(state)
    app.state.imports = imports
    resolve = image_resolver(settings.import_root, settings.url_allowlist)

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as value:
            try:
                yield value
            finally:  # before the server's own shutdown saves the indexes
                await run_in_threadpool(imports.stop)

    app.router.lifespan_context = lifespan
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "missing or wrong API key"},
        403: {"model": ErrorBody, "description": "writes are disabled (no API key configured)"},
        404: {"model": ErrorBody, "description": "no such import"},
        422: {"model": ErrorBody, "description": "not a catalogue CSV (code bad_catalogue), or an invalid request"},
        429: {"model": ErrorBody, "description": "too many imports waiting (code too_many_imports)"},
    }

    @app.post(
        "/imports",
        status_code=202,
        response_model=ImportStatus,
        tags=["products"],
        summary="Import a catalogue CSV as a background job (as `shoplens index` does)",
        dependencies=list(writer),
        responses=errors,
        description=(
            "multipart/form-data: a `catalogue` part (a CSV with the columns of `shoplens index`: product_id, image, "
            "title, category, domain and any metadata) and optionally `domain` (the domain of rows that name none). "
            "Each `image` cell is a path on the server's machine under its import folder (`--import-root DIR`; a "
            "relative path is read from there; symlinks and `..` are resolved and a path outside is refused) or a URL "
            "under the fetch allow-list (`--allow-url`). A row that breaks these rules is that row's error in the "
            "report; the others are indexed. Answers 202 with the job; follow it with GET /imports/{id}. Jobs run one "
            "at a time, in the server's memory: a restart forgets them."
        ),
    )
    def start_import(
        catalogue: Annotated[UploadFile, File(description="the catalogue CSV")],
        domain: Annotated[Literal["apparel", "other_product"] | None, Form(description="domain of the rows that name none")] = None,
    ) -> JSONResponse:
        name = "".join(c for c in (catalogue.filename or "catalogue.csv") if c.isprintable())[:256] or "catalogue.csv"
        raw = catalogue.file.read(settings.max_request_bytes + 1)
        try:
            check_domain(domain)
            rows = list(read_catalogue_bytes(raw, name=name, image=resolve))
        except CatalogueError as err:
            return JSONResponse({"error": str(err), "code": "bad_catalogue"}, status_code=422)
        if not rows:
            return JSONResponse({"error": f"{name}: the catalogue has no rows", "code": "bad_catalogue"}, status_code=422)
        try:
            status = imports.submit(_Job(name, rows, domain))
        except _Busy as err:
            return JSONResponse({"error": str(err), "code": "too_many_imports"}, status_code=429)
        except _Stopped as err:
            return JSONResponse({"error": str(err), "code": "store_unavailable"}, status_code=503)
        return JSONResponse(status.model_dump(), status_code=202, headers={"Location": f"/imports/{status.id}"})

    @app.get(
        "/imports/{job_id}",
        response_model=ImportStatus,
        tags=["products"],
        summary="An import job's state and progress, and its report when done",
        dependencies=list(writer),
        responses=errors,
    )
    def get_import(job_id: Annotated[str, PathParam(max_length=64, description="the id POST /imports answered")]) -> ImportStatus:
        return imports.get(job_id)
