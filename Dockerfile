# stackserve: the HTTP service for one bundle, CPU TensorFlow, one worker per container.
#
#   docker build -t stackserve .
#   docker run -p 8000:8000 -v "$PWD/artifacts/demo/bundle:/bundle:ro" stackserve
#
# The bundle is mounted read-only at /bundle (STACKSERVE_BUNDLE). To bake one in instead, build
# FROM this image:  FROM stackserve  /  COPY --chown=10001:0 my-bundle /bundle
# Settings are STACKSERVE_* variables (README); thread counts: STACKSERVE_INTRA_OP_THREADS and
# STACKSERVE_INTER_OP_THREADS, and STACKSERVE_DECODE_THREADS.

FROM debian:bookworm-slim AS build
# Behind a TLS-inspecting proxy: mount its CA bundle into the build and pass the path, e.g.
#   --build-arg PIP_CERT=/run/host-ca.crt  (podman: -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro)
ARG PIP_CERT
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app app
COPY models models
COPY stacking stacking
# A plain (non-editable) install into a venv that the runtime stage copies whole.
RUN python3 -m venv /venv \
    && /venv/bin/pip install --no-cache-dir --upgrade pip \
    && /venv/bin/pip install --no-cache-dir . \
    && /venv/bin/python -m compileall -q /venv/lib

FROM debian:bookworm-slim
# Python 3.11 from Debian, nothing else: TensorFlow's wheel carries its own libraries.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin stackserve \
    && mkdir /bundle
COPY --from=build /venv /venv
# Any UID works (OpenShift-style): nothing is written outside /tmp, and /venv is world-readable.
ENV PATH=/venv/bin:$PATH \
    STACKSERVE_BUNDLE=/bundle \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/tmp/keras \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:0
EXPOSE 8000
STOPSIGNAL SIGTERM
# Healthy = ready: bundle verified, loaded and warmed up. Python, since the image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# uvicorn is PID 1: on SIGTERM it stops accepting, lets requests in flight finish, then exits.
CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--workers", "1", \
     "--timeout-graceful-shutdown", "30"]
