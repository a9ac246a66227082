"""The allocator setting (shoplens.allocator): a search's big buffers are reused, not faulted in anew."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shoplens import allocator
from shoplens.config import Config
from shoplens.errors import ConfigError
from shoplens.pipeline import Pipeline

glibc_only = pytest.mark.skipif(allocator._mallopt() is None, reason="the C library is not glibc: no malloc thresholds to set")

# SIFT on a printed, textured 384-px photo, five times after a warm-up, in a process that has
# imported the whole engine (as a search does): the fewest minor page faults of one extraction
# (a busy machine moves OpenCV's work between its threads, whose first use of a buffer faults).
_PROBE = textwrap.dedent(
    """
    import resource, sys
    import cv2, numpy as np
    import shoplens.api
    from shoplens.allocator import keep_freed_memory
    from shoplens.imaging import Photo
    from shoplens.local.features import FeatureExtractor

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (384, 384, 3), dtype=np.uint8), (0, 0), 2)
    for _ in range(60):
        x, y = (int(v) for v in rng.integers(0, 340, 2))
        cv2.putText(img, "ABC", (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, tuple(int(c) for c in rng.integers(0, 256, 3)), 2)
    if sys.argv[1] == "tuned":
        assert keep_freed_memory(64)
    extractor, photo = FeatureExtractor(max_side=384), Photo(pixels=img, size=(384, 384))
    for _ in range(3):
        extractor.extract(photo)
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        n = len(extractor.extract(photo))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(min(faults), n)
    """
)


def _faults_per_extraction(mode: str, env: dict[str, str] | None = None) -> tuple[float, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=env, timeout=120)
    faults, keypoints = out.stdout.split()
    return float(faults), int(keypoints)


@glibc_only
@pytest.mark.slow
def test_kept_memory_spares_sift_the_page_faults() -> None:
    plain, n_plain = _faults_per_extraction("plain")
    tuned, n_tuned = _faults_per_extraction("tuned")
    assert n_plain == n_tuned > 500  # the same work either way
    # glibc's own thresholds hand SIFT's scale space back after every photo (about 7,300 pages here).
    assert plain > 1000
    assert tuned < 0.02 * plain


def test_pipeline_applies_the_configured_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr("shoplens.pipeline.search.keep_freed_memory", lambda mib: calls.append(mib) or True)
    Pipeline(Config())
    Pipeline(Config().with_flags(**{"runtime.malloc_trim_mib": 0}))
    assert calls == [Config().runtime.malloc_trim_mib, 0]
    assert calls[0] > 0  # on by default


@glibc_only
def test_setting_is_recorded_and_zero_or_the_users_environment_leave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "applied", None)
    for var in (*allocator.USER_SETTINGS, "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    assert not allocator.keep_freed_memory(0)
    assert allocator.applied is None
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    assert not allocator.keep_freed_memory(64)
    assert allocator.applied is None
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert allocator.keep_freed_memory(64)
    assert allocator.applied == (64 << 20, allocator.MMAP_THRESHOLD)
    assert allocator.keep_freed_memory(8)  # smaller than the mmap threshold: both follow it
    assert allocator.applied == (8 << 20, 8 << 20)
    allocator.keep_freed_memory(Config().runtime.malloc_trim_mib)  # what the rest of the suite runs with


def test_negative_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="malloc_trim_mib"):
        allocator.keep_freed_memory(-1)
