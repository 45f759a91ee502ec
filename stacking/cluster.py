"""Where work runs beside this process: a Ray cluster (joined, or started here) and the threads a worker may use.

Shared by the fit's jobs (``training.executors``) and batch prediction (``inference.batch_predict``). Ray is an
optional extra (``pip install "stackserve[ray]"``), imported only when asked for; TensorFlow only to size a worker.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager

from stacking.errors import UserError


def import_ray(option: str):
    try:
        import ray
    except ImportError:
        raise UserError(f'{option}: Ray is not installed; pip install "stackserve[ray]"') from None
    return ray


def _check_answers(address: str) -> None:
    """Ray waits minutes for a head where nothing answers: a host:port that refuses is an error at once."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto", or empty (a local cluster): Ray finds it or says so itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"--ray-address {address}: nothing answers there ({exc})") from None


def check_ray(address: str, option: str = "--executor ray") -> None:
    """Ray is installed and ``address`` answers: said before any slow work starts."""
    import_ray(option)
    _check_answers(address)


def check_request(ray, address: str, request: dict[str, tuple[str, float]]) -> None:
    """On a local cluster (no autoscaler to add nodes), a request beyond the machine would wait forever.

    ``request``: option -> (Ray resource, amount), e.g. {"[cluster] cpus_per_job": ("CPU", 2)}.
    """
    if address:
        return  # a real cluster may grow to fit
    have = ray.cluster_resources()
    for option, (resource, amount) in request.items():
        if amount > have.get(resource, 0):
            raise UserError(
                f"{option} {amount:g}: the local Ray cluster has {have.get(resource, 0):g} {resource}; "
                "that would wait forever"
            )


@contextmanager
def ray_cluster(address: str, option: str = "--executor ray"):
    """Ray, connected: to ``address``, or a local cluster started here and stopped after.

    A caller that connected already (a notebook, a test) keeps its connection.
    """
    ray = import_ray(option)
    if ray.is_initialized():
        yield ray
        return
    check_ray(address, option)
    try:
        where = {"address": address} if address else {"address": "local", "include_dashboard": False}
        # Workers' own output stays in Ray's session logs; a job's error comes back with its remote traceback.
        ray.init(**where, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, ValueError) as exc:
        raise UserError(f"--ray-address {address}: cannot join the Ray cluster ({exc})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def job_threads(cpus: float) -> int:
    """TensorFlow's thread count for a job (or actor) given ``cpus`` CPUs."""
    return max(1, round(cpus))


def size_worker(cpus: float, gpus: float) -> None:
    """A cluster worker uses the cores it was given, and shares a GPU politely when given part of one.

    TensorFlow would otherwise start one thread per core of the machine in every worker.
    Once TensorFlow has started in a process its thread counts are fixed, so callers keep
    workers of different counts apart (``executors.ray_jobs``).
    """
    import tensorflow as tf

    threads = job_threads(cpus)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        if 0 < gpus < 1:
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass
