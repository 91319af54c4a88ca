# One image for the API and the workers; the command chooses the role (see docker-compose.yml).
#
# torch: requirements.txt pins torch==2.13.0. From PyPI on Linux x86_64 that wheel depends on NVIDIA's CUDA
# runtime wheels (several GB), which the GPU ask worker needs: the host provides only the driver (NVIDIA
# Container Toolkit). For a CPU-only image, install torch from PyTorch's CPU wheel index first:
#   docker build --build-arg TORCH_INDEX_URL=<that index URL> .
# (its `2.13.0+cpu` satisfies the pin, so the requirements step keeps it).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/models \
    DATA_DIR=/data \
    API_HOST=0.0.0.0 \
    API_PORT=8000

WORKDIR /app

ARG TORCH_INDEX_URL=""
COPY requirements.txt .
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "$(grep -o '^torch==[^ ]*' requirements.txt)"; \
    fi \
    && pip install -r requirements.txt

# The code stays root-owned (read-only to the service); the service writes only to its data and model
# cache and its device gate (a lock file), which named volumes mounted there inherit the ownership of.
COPY . .
# The `quarry` command line (pyproject's console script); the code itself runs from /app.
RUN pip install --no-deps --editable . \
    && useradd --create-home --uid 10001 quarry \
    && mkdir -p /data /models /run/quarry-gate \
    && chown quarry:quarry /data /models /run/quarry-gate
USER quarry

EXPOSE 8000
# The API's probe (Redis, broker and Milvus); docker-compose.yml gives workers and Flower their own.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# As devstack.processes.api_argv (what `make run` starts), bound to all interfaces.
CMD ["python", "-m", "gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--worker-class", "gthread", "--threads", "32", "--timeout", "120", "--graceful-timeout", "10", "--keep-alive", "30", "--no-control-socket", "--config", "/app/gunicorn.conf.py", "api:create_app()"]
