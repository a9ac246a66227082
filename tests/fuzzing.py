"""Fuzzing harnesses shared by the tests (short, bounded) and benchmarks/fuzz_server.py (long).

* :func:`fuzz_api`: schemathesis generates requests from the server's OpenAPI
  schema (valid and invalid ones) for every operation; every answer must be
  under 500, conform to the schema (status code, content type, body), and
  every error must be ``{"error": message, "code": code}`` JSON.
* :func:`fuzz_decoder`: mutated JPEG / PNG / GIF / WebP / BMP / TIFF bytes
  (bit flips, cuts, inserted junk, header fields changed) go through
  ``load_image``: each must decode or raise ``BadImageError``, quickly.
"""

from __future__ import annotations

import io
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from shoplens.errors import BadImageError
from shoplens.imaging import load_image


@dataclass
class ApiFuzzReport:
    cases: Counter = field(default_factory=Counter)  # (operation, mode) -> requests sent
    statuses: Counter = field(default_factory=Counter)  # status -> count
    failures: list[str] = field(default_factory=list)
    #: Schema-valid requests rejected with a 4xx: expected where the schema cannot say
    #: "a real photo" or "JSON of a product" (a form field is a string); counted, not failures.
    rejected_valid: int = 0

    @property
    def total(self) -> int:
        return sum(self.cases.values())


def fuzz_api(app: Any, *, examples: int, headers: dict[str, str], seed: int = 0, modes: tuple[str, ...] = ("positive", "negative")) -> ApiFuzzReport:
    """Send generated requests for every operation of ``app``'s schema (in process, ASGI)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.python import asgi
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance, negative_data_rejection]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = ApiFuzzReport()

    def check(operation: Any, mode: str, case: Any) -> None:
        report.cases[(operation.label, mode)] += 1
        try:
            response = case.call(headers=headers)
        except Exception as err:  # noqa: BLE001 - in process, an unhandled server error surfaces here
            report.failures.append(f"{operation.label} [{mode}] -> 500: the server raised {type(err).__name__}: {err}")
            return
        report.statuses[response.status_code] += 1
        where = f"{operation.label} [{mode}] -> {response.status_code}"
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not (isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("code"), str)):
                report.failures.append(f"{where}: error body is not {{error, code}} JSON: {response.text[:200]!r}")
            if mode == "positive" and response.status_code in (400, 413, 415, 422):
                report.rejected_valid += 1
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except BaseException as err:  # noqa: BLE001 - schemathesis raises a group of failures
            for sub in getattr(err, "exceptions", [err]):
                report.failures.append(f"{where}: {type(sub).__name__}: {str(sub).splitlines()[0][:200]}")

    try:
        for result in schema.get_all_operations():
            if not hasattr(result, "ok"):  # an operation the schema describes wrongly
                report.failures.append(f"invalid operation in the schema: {result.err()}")
                continue
            operation = result.ok()
            for mode in modes:

                @hseed(seed)
                @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
                def run(case: Any) -> None:
                    check(operation, mode, case)  # noqa: B023 - run() is called right here, in this iteration

                try:
                    run()
                except Unsatisfiable:
                    pass  # nothing invalid can be generated for it (no parameters, no body)
    finally:
        asgi.shutdown_lifespans()  # schemathesis keeps the app's lifespan running between requests
    return report


# -- the image decoder ------------------------------------------------------------
def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    out: dict[str, bytes] = {}
    for fmt, kwargs in (("JPEG", {"quality": 80}), ("PNG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {})):
        buf = io.BytesIO()
        img.save(buf, fmt, **kwargs)
        out[fmt] = buf.getvalue()
    buf = io.BytesIO()
    frames = [img.convert("P"), Image.fromarray(arr[::-1], "RGB").convert("P")]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out["GIF-animated"] = buf.getvalue()
    buf = io.BytesIO()
    img.convert("CMYK").save(buf, "JPEG")
    out["JPEG-CMYK"] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(buf, "PNG")
    out["PNG-16bit"] = buf.getvalue()
    return out


def _mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    b = bytearray(data)
    kind = rng.choice(["flip", "cut", "insert", "header", "splice", "zero"])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        b = b[: rng.randrange(len(b))]
    elif kind == "insert":
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "header":  # the fields that declare sizes and lengths live in the first bytes
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(min(len(b), 64))
            b[i] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    elif kind == "splice":
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        b = b[:i] + b[j:] + b[i:j]
    else:
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 256)] = b"\x00" * len(b[i : i + rng.randint(1, 256)])
    return kind, bytes(b)


@dataclass
class DecoderFuzzReport:
    tried: Counter = field(default_factory=Counter)  # (format, mutation) -> count
    outcomes: Counter = field(default_factory=Counter)  # decoded / refused
    failures: list[str] = field(default_factory=list)
    slowest_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.tried.values())


def fuzz_decoder(n: int, *, seed: int = 0, max_seconds: float = 5.0, max_pixels: int = 40_000_000) -> DecoderFuzzReport:
    """``n`` mutated images through ``load_image``: a photo or BadImageError, never anything else."""
    rng = random.Random(seed)
    seeds = _seeds()
    names = sorted(seeds)
    report = DecoderFuzzReport()
    extra = [b"", b"\x00", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"BM" + b"\xff" * 60]
    for i in range(n):
        if i < len(extra):
            fmt, kind, data = "raw", "prefix", extra[i]
        else:
            fmt = names[i % len(names)]
            kind, data = _mutate(seeds[fmt], rng)
        report.tried[(fmt, kind)] += 1
        start = time.perf_counter()
        try:
            photo = load_image(data, max_pixels=max_pixels, target_size=224)
            ok = photo.pixels.ndim == 3 and photo.pixels.shape[2] == 3 and photo.pixels.dtype == np.uint8
            report.outcomes["decoded" if ok else "bad shape"] += 1
            if not ok:
                report.failures.append(f"{fmt}/{kind} #{i}: decoded to {photo.pixels.shape} {photo.pixels.dtype}")
        except BadImageError:
            report.outcomes["refused"] += 1
        except Exception as err:  # noqa: BLE001 - this is what the fuzzer looks for
            report.outcomes["crashed"] += 1
            report.failures.append(f"{fmt}/{kind} #{i}: {type(err).__name__}: {err}")
        took = time.perf_counter() - start
        report.slowest_s = max(report.slowest_s, took)
        if took > max_seconds:
            report.failures.append(f"{fmt}/{kind} #{i}: took {took:.1f} s")
    return report
