# syntax=docker/dockerfile:1
# Stage 1 builds the wheel (compiler, Cython, OpenMP headers); stage 2 runs it with
# only the runtime libraries, as an unprivileged user.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY timbral ./timbral
COPY server ./server
# [postgres]: the registry driver, so DATABASE_URL works in the image
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres]"

FROM python:3.11-slim AS runtime
# libgomp1: the OpenMP runtime the compiled kernels link against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/timbral timbral
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV API_HOST=0.0.0.0 \
    API_PORT=8001 \
    TIMBRAL_MODEL_DIR=/models/current \
    LOG_LEVEL=INFO \
    PYTHONUNBUFFERED=1
USER timbral
WORKDIR /home/timbral
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=2s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('API_PORT', '8001'), timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "timbral.server"]
