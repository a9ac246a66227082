"""Where the backbone passes run: `shoplens index --device` (cpu, cuda, auto); never a setting the store keeps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shoplens import Shoplens
from shoplens.errors import ConfigError
from shoplens.models import create_model, pick_device

FLAGS = {"intent.classifier": "test-other_product", "local.enabled": False}


def test_a_device_torch_cannot_see_is_refused_before_anything_is_made(tmp_path: Path, synthetic_catalogue: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the refusal is for machines without one")
    store = tmp_path / "store"
    done = subprocess.run([sys.executable, "-m", "shoplens.cli", "index", str(synthetic_catalogue), "--store", str(store),
                           "--device", "cuda"], capture_output=True, text=True)
    assert done.returncode == 2 and "torch sees no CUDA GPU" in done.stderr and "Traceback" not in done.stderr
    assert not store.exists()
    with pytest.raises(ConfigError, match="CUDA device"):
        create_model("efficientnet_lite0", device="tpu")


def test_auto_is_the_cpu_where_torch_sees_no_gpu_and_is_not_saved(tmp_path: Path, synthetic_catalogue: Path) -> None:
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with Shoplens(tmp_path / "store", device="auto", **FLAGS) as lens:
        lens.index(synthetic_catalogue)
        assert lens.pipeline.device == pick_device("auto")
    saved = json.loads((tmp_path / "store" / "config.json").read_text())
    assert "device" not in json.dumps(saved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_store_indexed_on_the_gpu_holds_the_cpus_descriptors(tmp_path: Path, synthetic_catalogue: Path) -> None:
    vectors = {}
    for device in ("cpu", "cuda"):
        with Shoplens(tmp_path / device, device=device, **FLAGS) as lens:
            lens.index(synthetic_catalogue)
            images = sorted(lens.store.iter_images(), key=lambda im: (im.product_id, im.source))
            vectors[device] = np.stack([np.asarray(im.raw, np.float32) for im in images])
    assert np.abs(vectors["cpu"] - vectors["cuda"]).max() < 2e-3
