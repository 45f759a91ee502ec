# stackserve service image: CPU TensorFlow, one worker, bundle mounted at /bundle.
#   docker build -t stackserve .
#   docker run -p 8000:8000 -v "$PWD/artifacts/demo/bundle:/bundle:ro" stackserve
FROM debian:bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app app
COPY models models
COPY stacking stacking
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir --upgrade pip \
    && /venv/bin/pip install --no-cache-dir .

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin stackserve
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    STACKSERVE_BUNDLE=/bundle \
    TF_CPP_MIN_LOG_LEVEL=3 \
    PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--workers", "1"]
