"""The ``stacking`` commands that need no web stack: data, fit, meta, evaluate, predict, distill, report, ...

``app/cli.py`` adds ``serve`` and ``demo`` and is the console script; imports flow
app -> stacking, so the HTTP commands cannot live here. ``main(argv)`` returns the
exit code: 0 done, 2 bad usage or input (one line naming the file or option), 1
unexpected failure (with its traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from stacking import choices
from stacking.errors import UserError
from stacking.files import write_atomically

cli = typer.Typer(
    name="stacking",
    help="Stack several image CNNs into one stronger classifier, and serve it.",
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_cli = typer.Typer(help="Write a bundled real data set.")
cli.add_typer(data_cli, name="data")
preview_cli = typer.Typer(help="Pictures to check before a long fit.")
cli.add_typer(preview_cli, name="preview")
cache_cli = typer.Typer(help="The decoded-pixel cache: each image decoded once per size, reused by every command.")
cli.add_typer(cache_cli, name="cache")
study_cli = typer.Typer(help="Studies that answer a recipe question by measurement on your data.")
cli.add_typer(study_cli, name="study")

TTAOption = Annotated[Optional[int], typer.Option("--tta", help="TTA views (default: the bundle's policy).")]
PolicyOption = Annotated[
    Optional[str], typer.Option("--tta-policy", help=choices.TTA_POLICY.help("TTA policy (default: the bundle's)."))
]
MetaOption = Annotated[
    Optional[str], typer.Option(help=choices.META.help("Meta-learner; auto: chosen by cross-validation."))
]
CriterionOption = Annotated[
    Optional[str], typer.Option(help=choices.META_CRITERION.help("How meta candidates are ranked (default log_loss)."))
]
TTAFeaturesOption = Annotated[
    Optional[bool],
    typer.Option(
        "--tta-features/--no-tta-features", help="Give the meta-learner each model's TTA entropy and disagreement."
    ),
]
CalibrationOption = Annotated[
    Optional[str],
    typer.Option(help=choices.CALIBRATION.help("temperature: scale the chosen output, fitted on OOF rows.")),
]
ExecutorOption = Annotated[
    Optional[str], typer.Option(help=choices.EXECUTOR.help("local: this process; ray: a Ray cluster."))
]
RayAddressOption = Annotated[
    Optional[str], typer.Option(help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local one).")
]
OnBadOption = Annotated[
    str,
    typer.Option(
        "--on-bad-image",
        help=choices.ON_BAD_IMAGE.help("error: stop at an unreadable image; skip: leave it out and report it."),
    ),
]
# Every command that decodes a folder of images: where the decoded pixels are kept.
CacheDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--cache-dir",
        envvar="STACKSERVE_CACHE_DIR",
        help="Where decoded pixels are kept and reused (default: $XDG_CACHE_HOME/stackserve or ~/.cache/stackserve).",
        show_default=False,
    ),
]
# The commands that build models: where their weights come from, and whether they may be downloaded.
WeightsOption = Annotated[
    Optional[str],
    typer.Option(
        help="Starting weights of keras.applications models: imagenet, none, or a Keras weights file of the "
        "backbone without its top."
    ),
]
OfflineOption = Annotated[
    bool,
    typer.Option(
        envvar="STACKSERVE_OFFLINE",
        help="No downloads: ImageNet weights missing from Keras' cache are an error naming the file, before any work.",
    ),
]
# Every command that loads a bundle: what it trusts.
TrustCodeOption = Annotated[
    bool,
    typer.Option(
        "--trust-custom-code",
        envvar="STACKSERVE_TRUST_CUSTOM_CODE",
        help="Import the Python modules the bundle's own architectures come from (runs their code).",
    ),
]
RuntimeOption = Annotated[
    str,
    typer.Option(
        "--runtime",
        envvar="STACKSERVE_RUNTIME",
        help=choices.RUNTIME.help(
            "Where the base models run; auto: as the fit chose per model "
            "(the exported file unless TensorFlow was faster)."
        ),
    ),
]
ServeAsOption = Annotated[
    str,
    typer.Option(
        "--serve-as",
        envvar="STACKSERVE_SERVE_AS",
        help=choices.SERVE_AS.help(
            "How the bundle answers: the stack, the cascade (cheap stages first, the stack for the rest) "
            "or the distilled student."
        ),
    ),
]
BudgetOption = Annotated[
    Optional[float],
    typer.Option(
        "--latency-budget-ms",
        envvar="STACKSERVE_LATENCY_BUDGET_MS",
        help="Serve the most accurate option whose measured ms per image fits (instead of --serve-as).",
    ),
]
VerifyKeyOption = Annotated[
    Optional[Path],
    typer.Option(
        "--verify-key",
        envvar="STACKSERVE_VERIFY_KEY",
        help="Public key (PEM): refuse the bundle unless signed with its private key and unchanged since.",
    ),
]


def make_cache(cache_dir: Path | None):
    from stacking.data.cache import PixelCache

    return PixelCache(cache_dir)


def make_trust(trust_custom_code: bool, verify_key: Path | None):
    from stacking.bundle import Trust

    return Trust(custom_code=trust_custom_code, verify_key=verify_key)


@data_cli.command("digits")
def data_digits(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the data set into.")],
    limit: Annotated[Optional[int], typer.Option(help="Keep a stratified subset of this many scans.")] = None,
    train_scans: Annotated[
        Optional[int], typer.Option(help="Keep this many training scans (stratified); the test split is untouched.")
    ] = None,
) -> None:
    """scikit-learn's 1,797 handwritten digit scans as PNGs, with a labelled test split."""
    from stacking.data.digits import write_digits

    counts = write_digits(out, limit=limit, train_scans=train_scans)
    typer.echo(f"wrote {counts['train']} training and {counts['test']} test images to {out}")


@preview_cli.command("augment")
def preview_augment(
    data: Annotated[Path, typer.Option("--data", help="Class folders or train.csv + train/.")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write.")],
    config: Annotated[
        Optional[Path], typer.Option(help="TOML settings file (its [augmentation] and image_size).")
    ] = None,
    count: Annotated[int, typer.Option(help="Images to show, one per class in turn.")] = 8,
    copies: Annotated[int, typer.Option(help="Augmented copies per image.")] = 5,
    cache_dir: CacheDirOption = None,
) -> None:
    """A grid of originals and augmented copies, so a wrong augmentation is seen before training."""
    from stacking.reporting.preview import preview_augmentation
    from stacking.training.config import load_config

    if count < 1 or copies < 1:
        raise UserError("--count and --copies: must be at least 1")
    cfg = load_config(config, {})
    written = preview_augmentation(
        data, out, cfg.train.augmentation, cfg.image_size, cfg.seed, count, copies, make_cache(cache_dir)
    )
    typer.echo(f"wrote {written}")


@cache_cli.command("info")
def cache_info(cache_dir: CacheDirOption = None) -> None:
    """What the cache holds: entries and size per decoder and image size."""
    cache = make_cache(cache_dir)
    rows = cache.info()
    typer.echo(f"pixel cache: {cache.root}")
    if not rows:
        typer.echo("empty")
        return
    typer.echo(f"{'decoder':<28} {'size':>5} {'entries':>9} {'MiB':>10}")
    for row in rows:
        mark = "" if row["current"] else " (not this version's: stacking cache clear removes it)"
        typer.echo(f"{row['decoder']:<28} {row['size']:>5} {row['entries']:>9} {row['bytes'] / 2**20:>10.1f}{mark}")
    typer.echo(
        f"{'total':<28} {'':>5} {sum(r['entries'] for r in rows):>9} {sum(r['bytes'] for r in rows) / 2**20:>10.1f}"
    )


@cache_cli.command("clear")
def cache_clear(cache_dir: CacheDirOption = None) -> None:
    """Remove every decoded image (they are decoded again when next needed)."""
    cache = make_cache(cache_dir)
    entries, size = cache.clear()
    typer.echo(f"removed {entries} entries ({size / 2**20:.1f} MiB) from {cache.root}")


@cli.command("fit")
def fit_command(
    data: Annotated[Path, typer.Option("--data", help="Class folders or train.csv + train/.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write.")],
    config: Annotated[Optional[Path], typer.Option(help="TOML settings file.")] = None,
    models: Annotated[
        Optional[str],
        typer.Option(
            help="Comma-separated ARCH or ARCH@SIZE (each a base model with the defaults; replaces [[model]])."
        ),
    ] = None,
    protocol: Annotated[Optional[str], typer.Option(help=choices.PROTOCOL.help("How OOF rows are made."))] = None,
    folds: Annotated[Optional[int], typer.Option(help="K for --protocol kfold.")] = None,
    tta: TTAOption = None,
    tta_policy: Annotated[Optional[str], typer.Option(help=choices.TTA_POLICY.help("TTA policy."))] = None,
    meta: MetaOption = None,
    meta_criterion: CriterionOption = None,
    tta_features: TTAFeaturesOption = None,
    calibration: CalibrationOption = None,
    group_column: Annotated[
        Optional[str],
        typer.Option(help="Column of train.csv (or groups.csv) keeping groups on one side of every split."),
    ] = None,
    final: Annotated[Optional[str], typer.Option(help=choices.FINAL.help("kfold's served models."))] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs per base model.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for splits, training and the meta-learner.")] = None,
    image_size: Annotated[
        Optional[int], typer.Option(help="Every base model's input side (a [[model]] table's own size is replaced).")
    ] = None,
    weights: WeightsOption = None,
    offline: OfflineOption = False,
    on_bad_image: Annotated[
        Optional[str],
        typer.Option(
            "--on-bad-image", help=choices.ON_BAD_IMAGE.help("An unreadable image stops the fit or is left out.")
        ),
    ] = None,
    runtime: Annotated[
        Optional[str],
        typer.Option(
            help=choices.RUNTIME.help(
                "Serve (and make OOF rows) with: auto exports each model to LiteRT and keeps it on TensorFlow "
                "only where that is faster; litert fails if a model cannot be exported; tf exports nothing."
            )
        ),
    ] = None,
    quantize: Annotated[
        Optional[str],
        typer.Option(
            help=choices.QUANTIZE.help(
                "int8: also quantize each export (static, calibrated on training images), served only where its "
                "OOF accuracy holds and it is faster."
            )
        ),
    ] = None,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
    resume: Annotated[
        bool, typer.Option(help="Keep the finished jobs of an interrupted fit to --out; run the rest.")
    ] = False,
    sign_key: Annotated[
        Optional[Path], typer.Option(help="Private key (PEM): sign the bundle at the end (stacking sign).")
    ] = None,
    cache_dir: CacheDirOption = None,
) -> None:
    """Train base models, make OOF predictions, fit and select the meta-learner, write the bundle.

    Each (base model, fold) is a job, run here or on a Ray cluster (--executor ray).
    """
    from stacking.training.config import load_config
    from stacking.training.fit import fit

    overrides = {
        "models": tuple(m.strip() for m in models.split(",") if m.strip()) if models else None,
        "protocol": protocol,
        "folds": folds,
        "tta_views": tta,
        "tta_policy": tta_policy,
        "meta": meta,
        "epochs": epochs,
        "seed": seed,
        "image_size": image_size,
        "weights": weights,
        "on_bad_image": on_bad_image,
        "meta_criterion": meta_criterion,
        "tta_features": tta_features,
        "calibration": calibration,
        "group_column": group_column,
        "final": final,
        "executor": executor,
        "ray_address": ray_address,
        "runtime": runtime,
        "quantize": quantize,
    }
    cfg = load_config(config, overrides)
    fit(data, out, cfg, echo=typer.echo, resume=resume, sign_key=sign_key, offline=offline, cache=make_cache(cache_dir))
    typer.echo(f"bundle written to {out}; report: {out / 'report' / 'index.html'}")


@study_cli.command("finetune")
def study_finetune_command(
    data: Annotated[Path, typer.Option("--data", help="Class folders or train.csv + train/.")],
    model: Annotated[str, typer.Option("--model", help="The keras.applications architecture: ARCH or ARCH@SIZE.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for study.json, index.html and the curves.")],
    weights: WeightsOption = None,
    strategies: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated strategies (default: all); stacking study finetune --help lists them."),
    ] = None,
    labelled_per_class: Annotated[
        Optional[int],
        typer.Option(help="Train on this many images per class (a tenth of them validate); hold out the rest."),
    ] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML settings: the recipe each strategy starts from.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs per strategy.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the split, the initial weights and training.")] = None,
    offline: OfflineOption = False,
    cache_dir: CacheDirOption = None,
) -> None:
    """Fine-tune one architecture under each strategy on one split; the table, the curves and the winner."""
    from stacking.training.config import load_config
    from stacking.training.finetune_study import pick_strategies, run_study

    chosen = pick_strategies(strategies)
    cfg = load_config(config, {"models": (model,), "weights": weights, "epochs": epochs, "seed": seed})
    study = run_study(data, out, cfg, chosen, labelled_per_class, typer.echo, offline, make_cache(cache_dir))
    typer.echo(f"study written to {out / 'study.json'}; page: {out / 'index.html'}")
    typer.echo(f"winner by held-out log-loss: {study['winner']}; for stacking fit --config:\n{study['winner_toml']}")


@cli.command("meta")
def meta_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    meta: MetaOption = None,
    meta_criterion: CriterionOption = None,
    tta_features: TTAFeaturesOption = None,
    calibration: CalibrationOption = None,
    trust_custom_code: TrustCodeOption = False,
    verify_key: VerifyKeyOption = None,
) -> None:
    """Refit only the meta-learner from the bundle's OOF arrays (seconds; no CNN is retrained)."""
    from stacking.training.meta_step import refit_meta

    overrides = {
        "meta": meta,
        "meta_criterion": meta_criterion,
        "tta_features": tta_features,
        "calibration": calibration,
    }
    refit_meta(bundle, overrides, echo=typer.echo, trust=make_trust(trust_custom_code, verify_key))
    typer.echo(f"meta-learner of {bundle} refitted; report: {bundle / 'report' / 'index.html'}")


@cli.command("evaluate")
def evaluate_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    data: Annotated[Path, typer.Option("--data", help="Class folders, or a folder of images with --labels.")],
    labels: Annotated[Optional[Path], typer.Option(help="Id,Category CSV for the images in --data.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the table as JSON.")] = None,
    tta: TTAOption = None,
    tta_policy: PolicyOption = None,
    on_bad_image: OnBadOption = "error",
    runtime: RuntimeOption = "auto",
    serve_as: ServeAsOption = "stack",
    latency_budget_ms: BudgetOption = None,
    trust_custom_code: TrustCodeOption = False,
    verify_key: VerifyKeyOption = None,
    cache_dir: CacheDirOption = None,
) -> None:
    """The comparison table on labelled images: base models, meta candidates, the stack, the cascade and the
    student, each with its accuracy and its cost; and diversity. The served option is marked."""
    from stacking.inference.predictor import Predictor
    from stacking.reporting.diversity import diversity, format_diversity
    from stacking.reporting.evaluate import evaluate_folder, format_table, record_evaluation

    predictor = Predictor(
        bundle,
        trust=make_trust(trust_custom_code, verify_key),
        runtime=runtime,
        serve_as=serve_as,
        latency_budget_ms=latency_budget_ms,
    )
    predictor.check_views(tta, tta_policy)
    rows, count, bad = evaluate_folder(
        predictor, data, labels, tta, tta_policy, on_bad_image, make_cache(cache_dir), lambda s: typer.echo(s, err=True)
    )
    for _, reason in bad:
        typer.echo(f"skipped {reason}", err=True)
    typer.echo(f"{count} labelled images; accuracy intervals: bootstrap 95%")
    typer.echo(format_table(rows))
    typer.echo(format_diversity(*diversity(bundle)))
    if json_out is not None:
        write_atomically(json_out, json.dumps(rows, indent=2) + "\n")
    report = record_evaluation(predictor, rows, data, labels, count, bad, tta, tta_policy)
    typer.echo(f"report updated: {report}" if report else "bundle folder is read-only: the report was not updated")


@cli.command("predict")
def predict_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    images: Annotated[Path, typer.Argument(help="Folder of images to classify.")],
    out: Annotated[Path, typer.Option("--out", help="Submission CSV to write (Id,Category).")],
    tta: TTAOption = None,
    tta_policy: PolicyOption = None,
    sample_submission: Annotated[
        Optional[Path], typer.Option(help="Row order (default: sample_submission.csv in or beside IMAGES).")
    ] = None,
    probabilities: Annotated[
        Optional[Path], typer.Option(help="Also write every class probability (.parquet, else CSV).")
    ] = None,
    on_bad_image: OnBadOption = "error",
    fallback_class: Annotated[
        Optional[str],
        typer.Option(help="With --on-bad-image skip: give unreadable images this class instead of leaving them out."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images decoded and predicted at a time.")] = 256,
    workers: Annotated[int, typer.Option(help="Threads decoding images.")] = 4,
    call_rows: Annotated[
        int, typer.Option(help="Image-views per compiled call: one padded shape (see the manual's speed page).")
    ] = 64,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run of the same command from its checkpoint.")
    ] = False,
    executor: Annotated[
        str, typer.Option(help=choices.EXECUTOR.help("ray: Ray Data, actors that each load the bundle."))
    ] = "local",
    ray_address: RayAddressOption = None,
    actors: Annotated[int, typer.Option(help="With --executor ray: actors, each with its own copy of the bundle.")] = 2,
    cpus_per_actor: Annotated[
        float, typer.Option(help="With --executor ray: CPUs each actor asks Ray for (its runtime's threads).")
    ] = 1.0,
    runtime: RuntimeOption = "auto",
    serve_as: ServeAsOption = "stack",
    latency_budget_ms: BudgetOption = None,
    cache_dir: CacheDirOption = None,
    trust_custom_code: TrustCodeOption = False,
    verify_key: VerifyKeyOption = None,
) -> None:
    """Write an offline submission, streamed in chunks and resumable; rows in sample_submission.csv order if any."""
    from stacking.inference.batch_predict import PredictOptions, checkpoint_dir, predict_folder
    from stacking.inference.predictor import Predictor

    predictor = Predictor(
        bundle,
        call_rows,
        make_trust(trust_custom_code, verify_key),
        runtime,
        serve_as=serve_as,
        latency_budget_ms=latency_budget_ms,
    )
    options = PredictOptions(
        tta,
        tta_policy,
        on_bad_image,
        fallback_class,
        batch_size,
        workers,
        resume,
        executor,
        ray_address or "",
        actors,
        cpus_per_actor,
        str(cache_dir or ""),
    )
    try:
        summary = predict_folder(
            predictor, images, out, options, sample_submission, probabilities, echo=lambda s: typer.echo(s, err=True)
        )
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted: finished chunks are kept in {checkpoint_dir(out)}; rerun the same command with "
            "--resume to continue",
            err=True,
        )
        raise typer.Exit(130) from None
    for file, reason in summary.skipped:
        typer.echo(f"skipped {reason}" if reason.startswith(file) else f"skipped {file}: {reason}", err=True)
    fresh = summary.images - summary.resumed_images
    typer.echo(
        f"wrote {len(summary.table)} predictions to {out}: {summary.images} images, {len(summary.skipped)} "
        f"unreadable{f' (given {fallback_class})' if fallback_class and summary.skipped else ''}, "
        f"{fresh} predicted in {summary.seconds:.1f} s ({fresh / max(summary.seconds, 1e-9):.1f} images/s)"
        + (f", {summary.resumed_images} resumed" if summary.resumed_images else "")
    )


@cli.command("distill")
def distill_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    student: Annotated[
        str,
        typer.Option(
            "--student",
            help="The student: a registered architecture as ARCH or ARCH@SIZE (from scratch, the fit's recipe), a "
            "base model's name (its architecture, size, weights and recipe), or a TOML file with one [[model]] table.",
        ),
    ],
    unlabelled: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of unlabelled images: the stack labels them, the student learns from those answers too."
        ),
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs (default: the fit's).")] = None,
    data: Annotated[
        Optional[Path],
        typer.Option("--data", help="The training data the bundle was fitted on (default: the folder the fit read)."),
    ] = None,
    teaching: Annotated[
        str,
        typer.Option(
            help=choices.TEACHING.help(
                "consistent: the stack answers every augmented, blended picture the student trains on; fixed: its "
                "one answer per plain image (the old way, for comparison)."
            )
        ),
    ] = choices.TeachingMethod.CONSISTENT,
    copies: Annotated[int, typer.Option(help="Consistent teaching: pictures per image, each answered once.")] = 8,
    mixup: Annotated[
        float, typer.Option(help="Consistent teaching: a blend's share drawn from Beta(a, a); 0: no blending.")
    ] = 1.0,
    temperature: Annotated[float, typer.Option(help="Targets and the student's answers softened alike.")] = 1.0,
    trust_custom_code: TrustCodeOption = False,
    verify_key: VerifyKeyOption = None,
    cache_dir: CacheDirOption = None,
) -> None:
    """Train one student network on the stack's honest soft targets; store it in the bundle (--serve-as student)."""
    from stacking.training.distill import Teaching, distill

    trust = make_trust(trust_custom_code, verify_key)
    how = Teaching(teaching, copies, mixup, temperature)
    distill(
        bundle, student, unlabelled, epochs, data, trust, echo=typer.echo, cache=make_cache(cache_dir), teaching=how
    )
    typer.echo(f"student stored in {bundle}; serve it with: stacking serve {bundle} --serve-as student")


@cli.command("report")
def report_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    trust_custom_code: TrustCodeOption = False,
    verify_key: VerifyKeyOption = None,
) -> None:
    """(Re)write BUNDLE/report/index.html."""
    from stacking.bundle import load_manifest
    from stacking.reporting.report import write_report

    manifest = load_manifest(bundle, make_trust(trust_custom_code, verify_key))
    typer.echo(f"report written to {write_report(bundle, manifest)}")


@cli.command("sign")
def sign_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    key: Annotated[Path, typer.Option("--key", help="Elliptic-curve private key (PEM) to sign with.")],
) -> None:
    """Sign the bundle (OpenSSF model signing): --verify-key PUBLIC.pem then refuses it if anything changes."""
    from stacking.bundle import load_manifest
    from stacking.bundle.signing import sign_bundle

    load_manifest(bundle)  # sign only what is intact
    typer.echo(f"signed {bundle}: {sign_bundle(bundle, key)}")


@cli.command("migrate")
def migrate_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder in the older format 2.")],
    trust_custom_code: Annotated[
        bool,
        typer.Option(
            "--trust-custom-code",
            help="Required: format 2 meta-learners are pickles, and reading them runs their code.",
        ),
    ] = False,
) -> None:
    """Rewrite a format-2 bundle in place in the current, pickle-free format (loads its pickles once)."""
    from stacking.bundle.migrate import migrate_bundle

    manifest = migrate_bundle(bundle, trust_custom_code)
    typer.echo(
        f"{bundle} is now bundle format {manifest.format_version}: meta-learners in "
        f"{manifest.meta_learner.file} and {manifest.meta_learner.candidates_file}, no pickle left"
    )


def main(argv: list[str] | None = None, app: typer.Typer = cli) -> int:
    """Run the CLI on ``argv``; return the exit code instead of exiting."""
    argv = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv or ["--help"], prog_name="stacking", standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        typer.echo(f"error: {exc.format_message()}", err=True)
        return getattr(exc, "exit_code", 2)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    return result if isinstance(result, int) else 0
