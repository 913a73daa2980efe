# lookalike on a CUDA machine: docker build -t lookalike . && \
#   docker run --gpus all --shm-size=2g -v hf-cache:/cache/huggingface -v "$PWD/store:/store" \
#     -v "$PWD/images:/images:ro" lookalike index /images --store /store
# (--shm-size: the decode workers hand batches over through shared memory; Docker's default 64 MB is too small.)
# The search page (inside a container it must bind to all interfaces to be reachable through -p):
#   docker run --gpus all -p 8501:8501 -v hf-cache:/cache/huggingface -v "$PWD/store:/store" \
#     -v "$PWD/images:/images:ro" lookalike serve --store /store --host 0.0.0.0
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    LOOKALIKE_STORE=/store \
    PYTHONUNBUFFERED=1
RUN python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY indexer indexer
COPY store store
COPY ui ui
RUN pip install --no-cache-dir ".[gpu]"

VOLUME ["/cache/huggingface", "/store"]
EXPOSE 8501
ENTRYPOINT ["lookalike"]
CMD ["--help"]
