"""Prometheus metrics of the service.

One registry per process (one worker per container). Compute time is measured per
batch: the base models run in one compiled call (every model, every view), so
``forward`` covers them together; the meta-learner is timed apart.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()
REQUESTS = Counter("stackserve_requests_total", "HTTP requests", ["route", "status"], registry=REGISTRY)
LATENCY = Histogram(
    "stackserve_request_seconds",
    "HTTP request latency",
    ["route"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge("stackserve_in_flight_requests", "HTTP requests being handled", registry=REGISTRY)
QUEUE_DEPTH = Gauge("stackserve_queue_jobs", "Jobs waiting for the models", registry=REGISTRY)
QUEUE_WAIT = Histogram(
    "stackserve_queue_wait_seconds",
    "Time a job waited for the models",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
BATCH_IMAGES = Histogram(
    "stackserve_batch_images",
    "Images per model call",
    registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
COMPUTE = Histogram(
    "stackserve_compute_seconds",
    "Compute time per batch: base models (all views) and meta-learner",
    ["stage"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
IMAGES = Counter("stackserve_images_total", "Images predicted", registry=REGISTRY)
VIEWS = Counter("stackserve_views_total", "TTA views run (images x views)", registry=REGISTRY)
REJECTED = Counter("stackserve_rejected_total", "Requests refused before any work", ["reason"], registry=REGISTRY)
DROPPED = Counter(
    "stackserve_dropped_jobs_total", "Queued jobs dropped before the models", ["reason"], registry=REGISTRY
)
MODEL = Gauge("stackserve_model_info", "The served bundle (value 1)", ["name", "version"], registry=REGISTRY)


def record_batch(images: int, views: int, seconds: dict[str, float]) -> None:
    BATCH_IMAGES.observe(images)
    IMAGES.inc(images)
    VIEWS.inc(views)
    for stage, value in seconds.items():
        COMPUTE.labels(stage).observe(value)


def render_metrics() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
