"""The ``stacking`` console script: stacking's commands plus ``serve`` and ``demo``, which need HTTP."""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Optional

import typer

from stacking.cli import BudgetOption, RuntimeOption, ServeAsOption, TrustCodeOption, VerifyKeyOption, cli
from stacking.cli import main as stacking_main

DEMO_CONFIG = Path(str(files("stacking") / "configs" / "digits.toml"))
DEMO_STUDENT = "tiny_cnn@16"  # the demo's cheapest network
DEMO_TRAIN_SCANS = 500  # of the 1,437 training scans: a task where the members differ (configs/digits.toml)


def serve_bundle(bundle: Path, **overrides) -> None:
    """Verify the bundle (a bad one exits 2 before any port opens), then run uvicorn with one worker; the service
    loads the bundle from this one pre-flight instead of checking every file again.

    ``overrides`` are flag values; ``None`` leaves the ``STACKSERVE_*`` variable or the default.
    """
    import uvicorn
    from pydantic import ValidationError

    from app.main import create_app
    from app.settings import Settings
    from stacking.bundle import check_custom_code, load_manifest, runtime_of
    from stacking.errors import UserError
    from stacking.inference.options import resolve_serve_as

    try:
        settings = Settings(bundle=bundle, **{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    manifest = load_manifest(bundle, settings.trust)
    check_custom_code(bundle, manifest, settings.trust)
    for entry in manifest.base_models:
        runtime_of(entry, settings.runtime)  # a runtime some base model lacks: refused before any port opens
    served = resolve_serve_as(manifest, settings.serve_as, settings.latency_budget_ms)  # likewise an absent option
    typer.echo(
        f"answering with the {served}"
        + (f" (most accurate within {settings.latency_budget_ms:g} ms per image)" if settings.latency_budget_ms else "")
    )
    typer.echo(
        f"serving {bundle} on http://{settings.host}:{settings.port} (page at /, API at /v1/predict and "
        f"/v2/models/{bundle.resolve().name}/infer, docs at /docs)"
    )
    if settings.grpc_port is not None:
        typer.echo(f"gRPC on {settings.host}:{settings.grpc_port} (inference.GRPCInferenceService, grpc.health.v1)")
    uvicorn.run(
        create_app(settings, verified=manifest),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level="info",
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
    )


@cli.command("serve")
def serve_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    host: Annotated[Optional[str], typer.Option(help="Address to listen on [STACKSERVE_HOST, 127.0.0.1].")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port to listen on [STACKSERVE_PORT, 8000].")] = None,
    grpc_port: Annotated[
        Optional[int],
        typer.Option(help="Also serve the Open Inference Protocol over gRPC on this port [STACKSERVE_GRPC_PORT, off]."),
    ] = None,
    max_batch: Annotated[Optional[int], typer.Option(help="Images per model call [STACKSERVE_MAX_BATCH, 64].")] = None,
    max_wait_ms: Annotated[
        Optional[float],
        typer.Option(help="Most a batch waits for requests still decoding [STACKSERVE_MAX_WAIT_MS, 5]."),
    ] = None,
    queue_size: Annotated[
        Optional[int], typer.Option(help="Jobs that may wait; past it 503 [STACKSERVE_QUEUE_SIZE, 64].")
    ] = None,
    max_tta: Annotated[
        Optional[int], typer.Option(help="Most TTA views a request may ask for [STACKSERVE_MAX_TTA, 16].")
    ] = None,
    call_rows: Annotated[
        Optional[int], typer.Option(help="Image-views per compiled call [STACKSERVE_CALL_ROWS, 64].")
    ] = None,
    runtime: RuntimeOption = "auto",
    serve_as: ServeAsOption = "stack",
    latency_budget_ms: BudgetOption = None,
    trust_custom_code: TrustCodeOption = False,
    verify_key: VerifyKeyOption = None,
) -> None:
    """Start the HTTP service (every setting also reads its STACKSERVE_* variable: the manual's service page)."""
    serve_bundle(
        bundle,
        host=host,
        port=port,
        grpc_port=grpc_port,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        max_tta=max_tta,
        call_rows=call_rows,
        runtime=runtime,
        serve_as=serve_as,
        latency_budget_ms=latency_budget_ms,
        trust_custom_code=trust_custom_code or None,
        verify_key=verify_key,
    )


@cli.command("demo")
def demo_command(
    workdir: Annotated[Path, typer.Option(help="Where the data, bundle and submission go.")] = Path("artifacts/demo"),
    epochs: Annotated[
        Optional[int], typer.Option(help="Maximum epochs per base model (default: the demo config's).")
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use a stratified subset of this many scans.")] = None,
    serve: Annotated[bool, typer.Option(help="Serve the bundle at the end.")] = True,
    host: Annotated[str, typer.Option(help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="Port to serve gRPC (the Open Inference Protocol) on.")] = 8001,
) -> None:
    """The whole job on the bundled digits: data, fit (with its cascade), a distilled student, the comparison
    table with every option's accuracy and cost, a submission, then serve."""
    from stacking.data.digits import write_digits
    from stacking.inference.batch_predict import predict_folder
    from stacking.inference.predictor import Predictor
    from stacking.reporting.diversity import diversity, format_diversity
    from stacking.reporting.evaluate import evaluate_folder, format_table, record_evaluation
    from stacking.training.config import load_config
    from stacking.training.distill import distill
    from stacking.training.fit import fit

    data, bundle = workdir / "digits", workdir / "bundle"
    counts = write_digits(data, limit=limit, train_scans=DEMO_TRAIN_SCANS)
    typer.echo(f"1/5 data: {counts['train']} training and {counts['test']} test scans in {data}")
    typer.echo(f"2/5 fit: config {DEMO_CONFIG}")
    fit(data, bundle, load_config(DEMO_CONFIG, {"epochs": epochs}), echo=lambda s: typer.echo(f"    {s}"))
    typer.echo(f"3/5 distill: one {DEMO_STUDENT}, taught by the stack answering each augmented picture it trains on")
    distill(bundle, DEMO_STUDENT, epochs=epochs, echo=lambda s: typer.echo(f"    {s}"))
    predictor = Predictor(bundle)
    rows, count, bad = evaluate_folder(predictor, data / "test", data / "test_labels.csv")
    typer.echo(f"4/5 held-out test split ({count} scans no model or meta-learner saw), every way to answer:")
    typer.echo(format_table(rows))
    typer.echo(format_diversity(*diversity(bundle)))
    record_evaluation(predictor, rows, data / "test", data / "test_labels.csv", count, bad)
    submission = workdir / "submission.csv"
    written = predict_folder(predictor, data / "test", submission, echo=lambda s: typer.echo(f"    {s}"))
    typer.echo(f"5/5 submission: {len(written.table)} rows in {submission}; report: {bundle / 'report' / 'index.html'}")
    if serve:
        serve_bundle(bundle, host=host, port=port, grpc_port=grpc_port)


def main(argv: list[str] | None = None) -> int:
    return stacking_main(argv, cli)


def run() -> None:
    """The console script: TensorFlow's CUDA and graph-attribute noise filtered out of the terminal."""
    from stacking.quiet import quiet_tensorflow

    quiet_tensorflow()
    sys.exit(main())
