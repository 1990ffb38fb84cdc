"""``edgetrim compress``: compress a model to a latency / FLOPs budget into a RUN folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetrim.commands._common import cli_errors, echo_json
from edgetrim.errors import EdgetrimError


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_cmd)


def _load_model(model: str):  # -> (module, example_inputs, spec)
    from edgetrim.compress.run_folder import load_run
    from edgetrim.model_spec import load_model

    if Path(model).is_dir():
        run = load_run(model)
        return run.model, run.example_inputs, str(model)
    loaded = load_model(model)
    return loaded.module, loaded.example_inputs, loaded.spec


def _measure_fn(lat_table, measure: bool | None):  # -> measure_fn or None
    """A ``measure_fn`` on the table's target: forced by ``--measure``, automatic when the table was
    profiled on this machine (same device fingerprint), off with ``--no-measure``."""
    if measure is False:
        return None
    from edgetrim.errors import TargetUnavailableError
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    device = lat_table.device
    try:
        target = get_target(device.target, threads=device.threads)
        same = target.info().fingerprint() == device.fingerprint()
    except TargetUnavailableError as exc:
        if measure:
            raise EdgetrimError(
                f"--measure: target {device.target!r} is not available here ({exc})"
            ) from None
        return None
    if measure is None and not same:
        return None
    timing = TimingConfig(warmup=10, min_runs=30, max_runs=300, time_cap_s=1.0)

    def measure_ms(module, example_inputs) -> float:
        return target.measure_model(module.eval(), tuple(example_inputs), timing).median_ms

    return measure_ms


def _blocks(text: str) -> frozenset:
    from edgetrim.compress.config import Block

    try:
        return frozenset(Block(b.strip()) for b in text.split(",") if b.strip())
    except ValueError:
        raise EdgetrimError(
            f"--blocks takes a comma list of {', '.join(b.value for b in Block)}, got {text!r}"
        ) from None


@cli_errors
def compress_cmd(
    model: Annotated[str, typer.Option("--model", help="zoo name, module:fn, file.py:fn, or a RUN folder")],
    data: Annotated[
        str,
        typer.Option(
            "--data", help="a built-in data set (digits, digits_hard, ...), module:fn or file.py:fn"
        ),
    ],
    table: Annotated[Path, typer.Option("--table", help="latency table of the target (edgetrim profile)")],
    out: Annotated[Path, typer.Option("--out", help="RUN folder to write")],
    budget_ms: Annotated[
        float | None, typer.Option("--budget-ms", help="latency budget on the table's target")
    ] = None,
    budget_flops: Annotated[
        float | None, typer.Option("--budget-flops", help="FLOPs budget (2 x MACs)")
    ] = None,
    lam: Annotated[
        float | None, typer.Option("--lambda", help="fixed penalty weight instead of a budget")
    ] = None,
    regularizer: Annotated[str | None, typer.Option("--regularizer", help="latency, flops or l1")] = None,
    blocks: Annotated[
        str, typer.Option("--blocks", help="comma list of prune, lowrank, quant, sparse")
    ] = "prune",
    epochs: Annotated[
        int,
        typer.Option(
            "--epochs",
            help="penalised training epochs (0: no penalty; widths fitted on the table from the model's "
            "own weight magnitudes, then fine-tuned)",
        ),
    ] = 5,
    finetune_epochs: Annotated[
        int, typer.Option("--finetune-epochs", help="fine-tune epochs of the result")
    ] = 2,
    finetune_schedule: Annotated[
        str, typer.Option("--finetune-schedule", help="fine-tune learning rate: cosine (to 0) or constant")
    ] = "cosine",
    penalised_schedule: Annotated[
        str,
        typer.Option(
            "--penalised-schedule",
            help="weights' learning rate during the penalised epochs: constant, or cosine (to 0, so the "
            "weights the cut is scored on have settled; the masks keep --gate-lr)",
        ),
    ] = "constant",
    pretrain_epochs: Annotated[
        int, typer.Option("--pretrain-epochs", help="train the model first (for untrained zoo models)")
    ] = 0,
    lr: Annotated[float, typer.Option("--lr", help="weight learning rate")] = 1e-3,
    gate_lr: Annotated[
        float,
        typer.Option(
            "--gate-lr",
            help="channel / head mask learning rate (how far the masks travel; model dependent: "
            "README, Compression)",
        ),
    ] = 0.05,
    bits_lr: Annotated[float, typer.Option("--bits-lr", help="bit-gate learning rate (quant block)")] = 0.05,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adam or sgd")] = "adam",
    bits_lambda: Annotated[
        float, typer.Option("--bits-lambda", help="weight-storage penalty with quant")
    ] = 0.0,
    sparse_lambda: Annotated[
        float, typer.Option("--sparse-lambda", help="l1/l2 weight penalty with sparse")
    ] = 0.0,
    unit_importance: Annotated[
        str,
        typer.Option(
            "--unit-importance",
            help="what the final width fit keeps: magnitude (|alpha| x column norm, per group) or taylor "
            "(estimated loss change, compared across groups)",
        ),
    ] = "magnitude",
    allocation: Annotated[
        str,
        typer.Option(
            "--allocation",
            help="how the width fit weighs one group against another: share (of the unit scores a step "
            "removes), distortion (measured output shift on training batches when the group is cut) or "
            "distortion_bn (the same with batch norms on each batch's statistics)",
        ),
    ] = "distortion",
    align: Annotated[
        int | None,
        typer.Option("--align", help="final widths are multiples of this (default: the table's NCHWc block)"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/checkpoint.pt")] = False,
    measure: Annotated[
        bool | None,
        typer.Option(
            "--measure/--no-measure",
            help="measure on the table's target and re-fit while over --budget-ms "
            "(default: when the table was profiled on this machine)",
        ),
    ] = None,
    measure_margin: Annotated[
        float,
        typer.Option(
            "--measure-margin",
            help="with --measure, the share of --budget-ms left free for later measurements to read the "
            "model slower: the measured steps aim at (1 - this) x budget",
        ),
    ] = 0.0,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
) -> None:
    """Compress MODEL to a latency budget with the l1/l2 latency surrogate; write the RUN folder."""
    from edgetrim.compress.api import compress, save_result
    from edgetrim.compress.config import CompressConfig
    from edgetrim.examples.data import load_data
    from edgetrim.examples.training import train_classifier
    from edgetrim.lookup_tables import load_table

    try:
        config = CompressConfig(
            budget_ms=budget_ms, budget_flops=budget_flops, lam=lam, regularizer=regularizer,
            blocks=_blocks(blocks), epochs=epochs, finetune_epochs=finetune_epochs,
            finetune_schedule=finetune_schedule, penalised_schedule=penalised_schedule,
            lr=lr, gate_lr=gate_lr, bits_lr=bits_lr,
            optimizer=optimizer, bits_lambda=bits_lambda, sparse_lambda=sparse_lambda, align=align, seed=seed,
            unit_importance=unit_importance, allocation=allocation, measure_margin=measure_margin,
        )  # fmt: skip
    except ValueError as exc:
        raise EdgetrimError(str(exc)) from None
    lat_table = load_table(table)
    module, example, spec = _load_model(model)
    train_loader, val_loader = load_data(data)
    if pretrain_epochs > 0:
        acc = train_classifier(module, train_loader, val_loader, epochs=pretrain_epochs, lr=lr, seed=seed)
        typer.echo(f"pretrained {pretrain_epochs} epochs: accuracy {acc:.4f}", err=True)

    def progress(row: dict) -> None:
        typer.echo(
            f"epoch {row['epoch']}/{config.epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
            f"predicted {row['predicted_ms']:.4f} ms  lambda {row['lambda']:.4g}",
            err=True,
        )

    measure_fn = _measure_fn(lat_table, measure) if budget_ms is not None else None
    out.mkdir(parents=True, exist_ok=True)
    result = compress(
        module, example, config, table=lat_table, train_loader=train_loader, val_loader=val_loader,
        checkpoint_dir=out, resume=resume, on_epoch=progress, measure_fn=measure_fn,
    )  # fmt: skip
    extra = {"model_spec": spec, "data_spec": data, "table": str(Path(table).resolve())}
    save_result(out, result, extra)
    info = result.report.to_info() | extra
    if json_out:
        echo_json(info)
        return
    r = result.report
    typer.echo(
        f"{out}: predicted {r.predicted_ms:.4f} ms (dense {r.dense_predicted_ms:.4f} ms"
        + (f", budget {r.budget_ms:.4f} ms" if r.budget_ms is not None else "")
        + (f", measured {r.measured_ms:.4f} ms" if r.measured_ms is not None else "")
        + f"), accuracy {r.accuracy:.4f} (dense {r.dense_accuracy:.4f})"
    )
    if r.kept_on_measurement:
        assert r.budget_ms is not None and r.measured_ms is not None
        typer.echo(
            f"{out}: the table predicts {r.predicted_ms / r.budget_ms:.2f}x the budget, the target measured "
            f"{r.measured_ms / r.budget_ms:.2f}x: kept on the measurement"
        )
