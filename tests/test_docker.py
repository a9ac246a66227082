"""The Dockerfile and compose.yaml: what they run exists, and, where Docker runs, the image serves.

The cheap checks always run: the commands the image and the compose services
start name real ``shoplens serve`` flags (read from its own ``--help``), and
compose.yaml parses with its services. Building the image needs a Docker
daemon and the network (PyPI), so that test is slow and skips where either is
missing.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text("utf-8").splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT in exec form (a JSON array) or shell form."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def serve_flags() -> set[str]:
    """The flags ``shoplens serve --help`` lists."""
    out = subprocess.run([sys.executable, "-m", "shoplens.cli", "serve", "--help"], capture_output=True, text=True, check=True, timeout=120).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", out))


def check_serve_command(argv: list[str], flags: set[str]) -> None:
    assert argv[:2] == ["shoplens", "serve"], argv
    used = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    assert used and set(used) <= flags, f"not flags of 'shoplens serve': {sorted(set(used) - flags)}"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"  # reachable from outside the container
    assert "--store" in argv


def test_dockerfile_runs_real_serve_flags() -> None:
    steps = instructions()
    keywords = [k for k, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert "ENTRYPOINT" not in keywords  # `docker run IMAGE shoplens …` runs any command
    cmd = exec_form(next(a for k, a in reversed(steps) if k == "CMD"))
    check_serve_command(cmd, serve_flags())
    assert cmd[cmd.index("--store") + 1].startswith("/data/")
    assert any(k == "VOLUME" and "/data" in a for k, a in steps)
    user = [a for k, a in steps if k == "USER"]
    assert user and user[-1] not in {"root", "0"}
    health = next(a for k, a in steps if k == "HEALTHCHECK")
    assert "/healthz" in health and ":8000" in health
    runs = " ".join(a for k, a in steps if k == "RUN")
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"  # the CPU build of torch
    assert '"torch==$TORCH_VERSION"' in runs and '--index-url "$TORCH_INDEX_URL"' in runs
    pinned = re.search(r"pip install torch==(\S+)", (REPO / "README.md").read_text("utf-8"))
    assert pinned and args["TORCH_VERSION"] == pinned.group(1)  # the version README installs
    assert re.search(r"pip install '?/tmp/shoplens\[server,milvus\]'?", runs)


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = [s.strip() for s in (REPO / ".dockerignore").read_text("utf-8").splitlines() if s.strip() and not s.startswith("#")]
    assert lines[0] == "*"
    for needed in ("pyproject.toml", "README.md", "src/"):
        assert f"!{needed}" in lines
    copied = [a.split()[0] for k, a in instructions() if k == "COPY"]
    assert set(copied) <= {"pyproject.toml", "README.md", "src"}


def test_compose_services() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    compose = yaml.safe_load(COMPOSE.read_text("utf-8"))
    services = compose["services"]
    assert {"shoplens", "shoplens-milvus", "milvus", "etcd", "minio"} <= set(services)
    flags = serve_flags()
    check_serve_command(services["shoplens"]["command"], flags)
    check_serve_command(services["shoplens-milvus"]["command"], flags)
    assert "profiles" not in services["shoplens"]
    for name in ("shoplens-milvus", "milvus", "etcd", "minio"):
        assert services[name]["profiles"] == ["milvus"], name
    milvus_cmd = services["shoplens-milvus"]["command"]
    assert milvus_cmd[milvus_cmd.index("--store") + 1] == "milvus://milvus:19530/shop"
    assert services["shoplens-milvus"]["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert services["milvus"]["image"].startswith("milvusdb/milvus:")
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    assert services["milvus"]["environment"] == {"ETCD_ENDPOINTS": "etcd:2379", "MINIO_ADDRESS": "minio:9000"}
    volumes = set(compose["volumes"])
    for service in services.values():
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in volumes, mount


def _docker_ready() -> str | None:
    """Why the image cannot be built here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"no Docker daemon answers: {(info.stderr or info.stdout).strip().splitlines()[-1:]}"
    return None


@pytest.mark.slow
def test_image_builds_and_serves() -> None:
    why = _docker_ready()
    if why:
        pytest.skip(f"cannot build the image: {why}")
    tag = f"shoplens-test:{uuid.uuid4().hex[:8]}"
    build = subprocess.run(["docker", "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=3600)
    if build.returncode != 0 and re.search(r"(?i)temporary failure|could not resolve|network is unreachable|connection refused", build.stderr):
        pytest.skip(f"the build could not reach a package index: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr[-4000:]
    container = None
    try:
        helped = subprocess.run(["docker", "run", "--rm", tag, "shoplens", "--help"], capture_output=True, text=True, timeout=300)
        assert helped.returncode == 0 and "serve" in helped.stdout, helped.stderr
        whoami = subprocess.run(["docker", "run", "--rm", tag, "id", "-u"], capture_output=True, text=True, timeout=300)
        assert whoami.stdout.strip() not in {"", "0"}

        started = subprocess.run(["docker", "run", "-d", "-p", "127.0.0.1::8000", tag], capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stderr
        container = started.stdout.strip()
        port = subprocess.run(["docker", "port", container, "8000/tcp"], capture_output=True, text=True, check=True, timeout=60).stdout
        url = f"http://127.0.0.1:{port.strip().splitlines()[0].rsplit(':', 1)[1]}/healthz"
        deadline, last = time.monotonic() + 180, ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    assert answer.status == 200
                    break
            except OSError as err:
                last = str(err)
                time.sleep(2)
        else:
            logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
            pytest.fail(f"/healthz did not answer in 180 s ({last}); logs:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline and status != "healthy":  # the image's own HEALTHCHECK agrees
            status = subprocess.run(["docker", "inspect", "--format", "{{.State.Health.Status}}", container],
                                    capture_output=True, text=True, timeout=60).stdout.strip()
            time.sleep(2)
        assert status == "healthy"
    finally:
        if container:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=120)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=300)
