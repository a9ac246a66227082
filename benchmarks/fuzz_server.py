"""Longer fuzzing runs than the tests: the HTTP API from its OpenAPI schema, and the image decoder.

    python benchmarks/fuzz_server.py --examples 200 --decoder 20000

Prints what was tried (requests per operation and generation mode, answers
by status, mutated images by format and mutation) and every failure; exits
1 if there was any. The same harness runs briefly in tests/test_server_fuzz.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import add_json_argument, write_result

from shoplens import Shoplens
from shoplens.api import ProductInput
from shoplens.server import ServerSettings, create_app
from tests import test_engine  # noqa: F401  (test intent classifier: no model work per request)
from tests.fuzzing import fuzz_api, fuzz_decoder
from tests.serverutil import AUTH, KEY, encode, picture


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=200, help="generated requests per operation and mode")
    p.add_argument("--decoder", type=int, default=20000, help="mutated images through the decoder")
    p.add_argument("--seed", type=int, default=0)
    add_json_argument(p, "fuzz_server")
    args = p.parse_args()
    failures: list[str] = []

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Shoplens(Path(tmp) / "store", **{"intent.classifier": "test-other_product"}) as lens:
        lens.put_products([ProductInput(f"p{i}", [encode(picture(i))], category="c", metadata={"price": i}) for i in range(5)])
        api = fuzz_api(create_app(lens, ServerSettings(api_key=KEY, max_upload_bytes=1_000_000)), examples=args.examples, headers=AUTH, seed=args.seed)
    api_s = time.perf_counter() - start
    print(f"API: {api.total} requests in {api_s:.0f} s, answers by status: {dict(sorted(api.statuses.items()))}")
    print(f"     schema-valid requests rejected with 4xx (junk photos / product JSON the schema cannot rule out): {api.rejected_valid}")
    by_mode = Counter()
    for (op, mode), n in sorted(api.cases.items()):
        by_mode[mode] += n
        print(f"     {op:42s} {mode:9s} {n}")
    print(f"     by mode: {dict(by_mode)}; failures: {len(api.failures)}")
    failures += api.failures

    start = time.perf_counter()
    dec = fuzz_decoder(args.decoder, seed=args.seed)
    dec_s = time.perf_counter() - start
    print(f"decoder: {dec.total} mutated images in {dec_s:.0f} s: {dict(dec.outcomes)}; slowest {dec.slowest_s * 1000:.0f} ms")
    by_format, by_kind = Counter(), Counter()
    for (fmt, kind), n in dec.tried.items():
        by_format[fmt] += n
        by_kind[kind] += n
    print(f"     by format: {dict(sorted(by_format.items()))}")
    print(f"     by mutation: {dict(sorted(by_kind.items()))}; failures: {len(dec.failures)}")
    failures += dec.failures

    for f in failures[:50]:
        print("FAIL", f)
    write_result("fuzz_server", {
        "api": {"requests": api.total, "seconds": round(api_s, 1), "statuses": {str(k): v for k, v in sorted(api.statuses.items())},
                "rejected_valid": api.rejected_valid, "by_mode": dict(by_mode), "failures": len(api.failures)},
        "decoder": {"images": dec.total, "seconds": round(dec_s, 1), "outcomes": dict(dec.outcomes), "slowest_s": dec.slowest_s,
                    "by_format": dict(sorted(by_format.items())), "failures": len(dec.failures)},
        "failure_samples": failures[:50],
    }, args.json)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
