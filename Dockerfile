# stackserve: the HTTP service for one bundle, one worker per container. Two images from this file:
#
#   docker build -t stackserve .                      the full install: TensorFlow, for any bundle
#   docker build --target slim -t stackserve:slim .   serving only: exported (LiteRT) base models, no TensorFlow
#   docker run -p 8000:8000 -v "$PWD/artifacts/demo/bundle:/bundle:ro" stackserve
#
# The slim image serves a bundle whose base models all run on their exported files (stacking fit's
# default, --runtime auto, where the export passed its parity check and was not slower); one that needs
# TensorFlow is refused there, /readyz 503 naming the models. The bundle is mounted read-only at /bundle
# (STACKSERVE_BUNDLE). To bake one in instead, build FROM either image:
#   FROM stackserve:slim  /  COPY --chown=10001:0 my-bundle /bundle
# gRPC (the Open Inference Protocol's inference.GRPCInferenceService, for tritonclient.grpc and KServe) is off
# unless STACKSERVE_GRPC_PORT is set: -e STACKSERVE_GRPC_PORT=8001 -p 8001:8001.
# Settings are STACKSERVE_* variables (the manual: docs/service.md); threads: STACKSERVE_RUNTIME_THREADS (LiteRT),
# STACKSERVE_INTRA_OP_THREADS and STACKSERVE_INTER_OP_THREADS (TensorFlow), STACKSERVE_DECODE_THREADS.

FROM debian:bookworm-slim AS source
# Behind a TLS-inspecting proxy: mount its CA bundle into the build and pass the path, e.g.
#   --build-arg PIP_CERT=/run/host-ca.crt  (podman: -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro)
ARG PIP_CERT
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY app app
COPY models models
COPY stacking stacking
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir --upgrade pip

# Serving only: exactly the serve extra's locked versions (requirements/serve.txt, every wheel checked against its
# sha256), then the package without its dependencies; pip and setuptools go too, as nothing is installed at run time.
FROM source AS build-slim
ARG PIP_CERT
RUN /venv/bin/pip install --no-cache-dir --require-hashes -r requirements/serve.txt \
    && /venv/bin/pip install --no-cache-dir --no-deps . \
    && /venv/bin/pip uninstall --yes --quiet pip setuptools \
    && /venv/bin/python -m compileall -q /venv/lib

# Everything, at the locked versions (requirements/full.txt, hashes required): a plain (non-editable) install into a
# venv that the runtime stage copies whole.
FROM source AS build
ARG PIP_CERT
RUN /venv/bin/pip install --no-cache-dir --require-hashes -r requirements/full.txt \
    && /venv/bin/pip install --no-cache-dir --no-deps . \
    && /venv/bin/python -m compileall -q /venv/lib

FROM debian:bookworm-slim AS runtime
# Python 3.11 from Debian, nothing else: the TensorFlow and LiteRT wheels carry their own libraries.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin stackserve \
    && mkdir /bundle
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
EXPOSE 8000 8001
STOPSIGNAL SIGTERM
# Healthy = ready: bundle verified, loaded and warmed up. Python, since the image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# uvicorn is PID 1: on SIGTERM it stops accepting, lets requests in flight finish, then exits.
CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--workers", "1", \
     "--timeout-graceful-shutdown", "30"]

FROM runtime AS slim
COPY --from=build-slim /venv /venv

# The default target (last): the full install.
FROM runtime AS full
COPY --from=build /venv /venv
