"""Load test of the service: throughput and latency against concurrency, batching on and off, and through the
clients users already have.

``batching``: starts ``stacking serve`` twice on loopback, once with dynamic batching (the default
settings) and once without (``max_batch=1``: every image runs alone), and sends
one-image requests of real digit scans (half PNG, half JPEG) from N concurrent clients.
For each concurrency it prints throughput (images/s), p50/p95/p99 latency and the mean
images per model call (from the server's own /metrics), then the throughput ratio of
batching on to off.

``clients``: one service (batching on, gRPC on) driven three ways side by side: the bare client on ``/v1``,
and Triton's own ``tritonclient`` (its asyncio API) over HTTP (binary tensors, its default) and over gRPC,
one image per request: the numbers a Triton user would measure.

The client shares the machine's cores with the server, as a sidecar or load balancer would.

Usage: python benchmarks/load.py [BUNDLE] [--mode batching,clients] [--concurrency 1,8,32,64]
       [--client-concurrency 1,8,32] [--requests 256] [--json FILE]
Without BUNDLE, it fits a small digits bundle first (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``stacking serve BUNDLE`` in a child process, with extra STACKSERVE_* settings.

    ``cold_start_s``: from starting the process to ``/readyz`` answering 200 (bundle
    verified, models loaded, every view count traced).
    """

    def __init__(self, bundle: Path, env: dict[str, str]):
        self.port = free_port()
        self.grpc_port = int(env.get("STACKSERVE_GRPC_PORT", 0)) or None
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-c",
            "from app.cli import run; run()",
            "serve",
            str(bundle),
            "--port",
            str(self.port),
        ]
        started = time.monotonic()
        self.process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while time.monotonic() < started + 600:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.cold_start_s = time.monotonic() - started
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the service did not become ready")

    def rss_mb(self) -> float:
        """The server process's resident memory, MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024

    def batches(self) -> tuple[float, float]:
        """(model calls, images) so far, from /metrics."""
        text = httpx.get(f"{self.url}/metrics").text
        count = float(re.search(r"^stackserve_batch_images_count (\S+)$", text, re.M).group(1))
        total = float(re.search(r"^stackserve_batch_images_sum (\S+)$", text, re.M).group(1))
        return count, total

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def test_images(folder: Path, count: int) -> list[tuple[str, bytes, str]]:
    """Real scans, every other one re-encoded as JPEG."""
    out = []
    for i, path in enumerate(sorted(folder.glob("*.png"))[:count]):
        if i % 2:
            buf = io.BytesIO()
            Image.open(path).convert("RGB").save(buf, "JPEG", quality=95)
            out.append((path.stem + ".jpg", buf.getvalue(), "image/jpeg"))
        else:
            out.append((path.name, path.read_bytes(), "image/png"))
    return out


def request_bytes(port: int, image: tuple[str, bytes, str], target: str = "/v1/predict") -> bytes:
    """One complete HTTP/1.1 keep-alive POST of a one-file multipart body, built once."""
    name, data, kind = image
    boundary = "stackserveloadtest"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: {kind}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """The status of one HTTP/1.1 response with a Content-Length body (what uvicorn sends for JSON)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def run_level(port: int, requests_bytes: list[bytes], concurrency: int, requests: int) -> dict:
    """``requests`` one-image requests from ``concurrency`` keep-alive connections; latency each, throughput overall.

    A bare asyncio client with prebuilt requests: a full HTTP library spends more CPU per
    request than the server's own work here, and on a 2-core machine it would measure itself.
    """
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                started = time.perf_counter()
                writer.write(requests_bytes[i % len(requests_bytes)])
                status = await read_response(reader)
                if status != 200:
                    raise RuntimeError(f"status {status}")
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(latencies, time.perf_counter() - started)


def summary(latencies: list[float], wall: float) -> dict:
    ms = np.array(latencies) * 1000
    return {
        "images_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


TRITON_CLIENTS = ("tritonclient http", "tritonclient grpc")


async def run_triton_level(
    kind: str, address: str, model: str, images: list[bytes], concurrency: int, requests: int
) -> dict:
    """As ``run_level``, through Triton's asyncio client: one client object shared by ``concurrency`` callers, the
    way an application would hold it, each request one image as a ``BYTES`` tensor built once."""
    if kind == "tritonclient http":
        import tritonclient.http.aio as triton
    else:
        import tritonclient.grpc.aio as triton
    client = triton.InferenceServerClient(address)
    tensors = [
        triton.InferInput("images", [1], "BYTES").set_data_from_numpy(np.array([data], dtype=object)) for data in images
    ]
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            result = await client.infer(model, [tensors[i % len(tensors)]])
            if result.as_numpy("label") is None:
                raise RuntimeError("no label in the answer")
            latencies.append(time.perf_counter() - started)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return summary(latencies, time.perf_counter() - started)
    finally:
        await client.close()


def measure(bundle: Path, images: list, levels: list[int], requests: int, env: dict[str, str]) -> dict[int, dict]:
    service = Service(bundle, env)
    prebuilt = [request_bytes(service.port, image) for image in images]
    try:
        asyncio.run(run_level(service.port, prebuilt, 4, 32))  # warm the caches
        results = {}
        for concurrency in levels:
            calls, total = service.batches()
            row = asyncio.run(run_level(service.port, prebuilt, concurrency, requests))
            calls_after, total_after = service.batches()
            row["mean_batch"] = (total_after - total) / max(calls_after - calls, 1)
            results[concurrency] = row
        return results
    finally:
        service.stop()


def measure_clients(bundle: Path, images: list, levels: list[int], requests: int) -> dict[str, dict[int, dict]]:
    """The bare client on /v1 and tritonclient over HTTP and gRPC against one service, level by level in turn."""
    service = Service(bundle, {"STACKSERVE_GRPC_PORT": str(free_port())})
    prebuilt = [request_bytes(service.port, image) for image in images]
    files = [data for _, data, _ in images]
    model = bundle.resolve().name
    addresses = {
        "tritonclient http": f"127.0.0.1:{service.port}",
        "tritonclient grpc": f"127.0.0.1:{service.grpc_port}",
    }

    def level(client: str, concurrency: int, count: int) -> dict:
        if client == "bare /v1":
            return asyncio.run(run_level(service.port, prebuilt, concurrency, count))
        return asyncio.run(run_triton_level(client, addresses[client], model, files, concurrency, count))

    try:
        results: dict[str, dict[int, dict]] = {client: {} for client in ("bare /v1", *TRITON_CLIENTS)}
        for client in results:
            level(client, 4, 32)  # warm the caches and the connections' code paths
        for concurrency in levels:  # side by side: every client at one level before the next level
            for client in results:
                results[client][concurrency] = level(client, concurrency, requests)
        return results
    finally:
        service.stop()


def print_clients(results: dict[str, dict[int, dict]], levels: list[int], requests: int) -> None:
    print(f"through the clients users have: one service (batching on), {requests} one-image requests per level")
    print(
        f"{'clients':>7}  {'client':<18}  {'images/s':>8}  {'p50 ms':>7}  {'p95 ms':>7}  {'p99 ms':>7}  {'/ bare':>6}"
    )
    for concurrency in levels:
        bare = results["bare /v1"][concurrency]["images_per_s"]
        for client, table in results.items():
            r = table[concurrency]
            print(
                f"{concurrency:>7}  {client:<18}  {r['images_per_s']:>8.1f}  {r['p50_ms']:>7.1f}  "
                f"{r['p95_ms']:>7.1f}  {r['p99_ms']:>7.1f}  {r['images_per_s'] / bare:>5.2f}x"
            )


def fit_small_bundle(workdir: Path) -> Path:
    from stacking.data.digits import write_digits
    from stacking.training.config import load_config
    from stacking.training.fit import fit

    write_digits(workdir / "digits")
    config = load_config(Path(__file__).resolve().parents[1] / "stacking" / "configs" / "digits.toml", {"epochs": 4})
    fit(workdir / "digits", workdir / "bundle", config, echo=lambda _: None)
    return workdir / "bundle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--images", type=Path, help="Folder of PNG scans (default: the digits test split).")
    parser.add_argument("--mode", default="batching,clients", help="batching, clients, or both (comma-separated).")
    parser.add_argument("--concurrency", default="1,8,32,64", help="Levels of the batching mode.")
    parser.add_argument("--client-concurrency", default="1,8,32", help="Levels of the clients mode.")
    parser.add_argument("--requests", type=int, default=256, help="Requests per concurrency level.")
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench-load"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/load.json"))
    args = parser.parse_args()
    modes = set(args.mode.split(","))
    if not modes or modes - {"batching", "clients"}:
        parser.error(f"--mode: {args.mode!r}; use batching, clients or both")
    bundle = args.bundle or fit_small_bundle(args.workdir)
    folder = args.images or (args.workdir / "digits" / "test")
    if not folder.is_dir():
        from stacking.data.digits import write_digits

        write_digits(args.workdir / "digits")
    images = test_images(folder, 128)
    report: dict = {"bundle": str(bundle), "cores": os.cpu_count(), "requests": args.requests}
    print(f"bundle {bundle}, {os.cpu_count()} cores")
    if "batching" in modes:
        levels = [int(c) for c in args.concurrency.split(",")]
        on = measure(bundle, images, levels, args.requests, {})
        off = measure(bundle, images, levels, args.requests, {"STACKSERVE_MAX_BATCH": "1"})
        print(f"batching on and off: {args.requests} one-image requests per level")
        print(
            f"{'clients':>7}  {'batching':>8}  {'images/s':>8}  {'p50 ms':>7}  {'p95 ms':>7}  {'p99 ms':>7}  "
            f"{'mean batch':>10}"
        )
        for concurrency in levels:
            for label, table in (("on", on), ("off", off)):
                r = table[concurrency]
                print(
                    f"{concurrency:>7}  {label:>8}  {r['images_per_s']:>8.1f}  {r['p50_ms']:>7.1f}  "
                    f"{r['p95_ms']:>7.1f}  {r['p99_ms']:>7.1f}  {r['mean_batch']:>10.2f}"
                )
        print(
            "throughput ratio, batching on / off: "
            + ", ".join(f"{c} clients {on[c]['images_per_s'] / off[c]['images_per_s']:.2f}x" for c in levels)
        )
        report.update(batching_on=on, batching_off=off)
    if "clients" in modes:
        levels = [int(c) for c in args.client_concurrency.split(",")]
        report["clients"] = measure_clients(bundle, images, levels, args.requests)
        print_clients(report["clients"], levels, args.requests)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
