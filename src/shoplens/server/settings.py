"""Server settings: limits, the write and read keys, CORS, the URL allow-list."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError

API_KEY_ENV = "SHOPLENS_API_KEY"
READ_KEY_ENV = "SHOPLENS_READ_KEY"
#: Shorter keys are refused: a key must not be guessable.
MIN_API_KEY_LENGTH = 16
MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """How ``shoplens serve`` guards and limits its endpoints.

    With no ``api_key``, write endpoints answer 403 (reads and search work).
    With a ``read_key``, search, product reads, photos and metrics need it
    (or the write key, which grants reads too); health, readiness, the web
    page and the OpenAPI schema stay open.
    """

    #: Key for write endpoints (header ``X-API-Key`` or ``Authorization: Bearer``).
    api_key: str | None = None
    #: Key for reads (search, products, photos, metrics), sent the same way; none: reads are open.
    read_key: str | None = None
    #: Largest photo accepted, in bytes; a bigger upload is cut off at this size with 413.
    max_upload_bytes: int = 20 * MiB
    #: Largest request body of a write (a batch of products with photos).
    max_request_bytes: int = 200 * MiB
    #: Largest decoded photo, in pixels (width x height as declared).
    max_pixels: int = 40_000_000
    #: The most one photo's decode may hold, in bytes (``shoplens.imaging.decoded_bytes``: the image as
    #: decoded plus the RGB photo it becomes): RGB PNGs up to about 33 M pixels, 1-byte modes up to the
    #: pixel limit; with ``search_concurrency`` decodes at once, decoding holds at most that many times this.
    max_decoded_bytes: int = 128 * MiB
    #: Origins allowed to call the API from a browser (CORS); empty: same origin only.
    cors_origins: tuple[str, ...] = ()
    #: URL prefixes the server may fetch photos from (``POST /search/url``); empty: never.
    url_allowlist: tuple[str, ...] = ()
    url_timeout_s: float = 10.0
    #: Searches run at once (each uses the CPU cores fully); more wait their turn.
    search_concurrency: int = 2
    max_top_k: int = 100
    max_batch_products: int = 256
    max_photos_per_product: int = 32
    max_page: int = 1000
    #: Most photos one ``POST /search/batch`` may carry (its body stays within ``max_request_bytes``).
    max_batch_photos: int = 16
    #: The folder whose files ``POST /imports`` catalogues may name (after resolving symlinks and ``..``);
    #: ``None``: imports may name only allow-listed URLs (``url_allowlist``).
    import_root: Path | None = None
    #: Vector indexes are saved this often when the catalogue changed (and at shutdown);
    #: every acknowledged write is already durable in SQLite.
    persist_interval_s: float = 300.0
    #: A rank-filter refit a write made due (``shoplens.pipeline.calibrate``) runs in the background this
    #: long after that write, so that a burst of writes gives one refit and no write waits for it.
    calibrate_delay_s: float = 30.0
    #: Product metadata fields the web page's result cards show under the title, in this order
    #: (``shoplens serve --card-fields price,url``); a value that is an http(s) URL is shown as a link.
    card_fields: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.api_key is not None and len(self.api_key) < MIN_API_KEY_LENGTH:
            raise ConfigError(f"the API key is too short to be safe: use at least {MIN_API_KEY_LENGTH} random characters (e.g. 'openssl rand -hex 24')")
        if self.read_key is not None and len(self.read_key) < MIN_API_KEY_LENGTH:
            raise ConfigError(f"the read key is too short to be safe: use at least {MIN_API_KEY_LENGTH} random characters (e.g. 'openssl rand -hex 24')")
        if self.read_key is not None and self.read_key == self.api_key:
            raise ConfigError("the read key is the write key: whoever may search could change the catalogue; use two different keys")
        for name in ("max_upload_bytes", "max_request_bytes", "max_pixels", "max_decoded_bytes", "search_concurrency", "max_top_k", "max_batch_products", "max_page", "max_batch_photos"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"server setting {name} must be positive")
        if not self.calibrate_delay_s >= 0:
            raise ConfigError("server setting calibrate_delay_s must be 0 or more")
        for name in self.card_fields:
            if not name or len(name) > 128 or any(not c.isprintable() for c in name) or "," in name:
                raise ConfigError(f"card field {name!r}: a metadata field name (1-128 printable characters, no comma)")
        if self.import_root is not None and not Path(self.import_root).is_dir():
            raise ConfigError(f"import root {self.import_root}: no such folder")
        for prefix in self.url_allowlist:
            if not prefix.startswith(("http://", "https://")):
                raise ConfigError(f"URL allow-list entry {prefix!r} must start with http:// or https://")

    @property
    def writes_enabled(self) -> bool:
        return self.api_key is not None

    @property
    def reads_need_key(self) -> bool:
        return self.read_key is not None

    @classmethod
    def from_env(
        cls, *, api_key_file: str | Path | None = None, read_key_file: str | Path | None = None, **overrides: Any
    ) -> ServerSettings:
        """Settings with the write key from ``api_key_file`` or ``$SHOPLENS_API_KEY``, the read key
        from ``read_key_file`` or ``$SHOPLENS_READ_KEY``.

        ``overrides`` set other fields; ``None`` values are ignored.
        """
        values = {k: v for k, v in overrides.items() if v is not None}
        for name in ("cors_origins", "url_allowlist", "card_fields"):
            if name in values:
                values[name] = tuple(values[name])
        if "import_root" in values:
            values["import_root"] = Path(values["import_root"])
        return replace(cls(), api_key=_key(api_key_file, API_KEY_ENV, "API key"), read_key=_key(read_key_file, READ_KEY_ENV, "read key"), **values)


def _key(path: str | Path | None, env: str, what: str) -> str | None:
    """A key from its file, else from the environment variable ``env``, else none."""
    if path is not None:
        try:
            key = Path(path).read_text("utf-8").strip()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the {what} file: {err.strerror or err}") from None
        if not key:
            raise ConfigError(f"{path}: the {what} file is empty")
        return key
    return os.environ[env].strip() if os.environ.get(env) else None
