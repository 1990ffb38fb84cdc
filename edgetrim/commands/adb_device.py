"""``edgetrim profile-phones``: profile several attached phones at once, one table per phone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetrim.commands._common import (
    DriftToleranceOption,
    cli_errors,
    drift_tolerance,
    echo_json,
    parse_int_list,
)
from edgetrim.errors import EdgetrimError


def register(app: typer.Typer) -> None:
    app.command("profile-phones")(profile_phones_cmd)


@cli_errors
def profile_phones_cmd(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="directory for one table per phone")],
    target: Annotated[
        list[str] | None, typer.Option("--target", help="adb:SERIAL (repeat); default: every attached phone")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="path/file.py:fn or package.module:fn")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="JSON grid file instead of --model")] = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="e.g. 1,3,64,64")] = None,
    threads: Annotated[int, typer.Option("--threads", help="benchmark_model --num_threads")] = 1,
    cores: Annotated[
        str | None, typer.Option("--cores", help="pin to these cores (default: big cluster)")
    ] = None,
    benchmark_binary: Annotated[
        Path | None,
        typer.Option("--benchmark-binary", help="LiteRT benchmark_model (default $EDGETRIM_BENCHMARK_MODEL)"),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue each phone's table")] = False,
    max_points: Annotated[int | None, typer.Option("--max-points", help="cap on points per table")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="coarse timing and small grids")] = False,
    refine: Annotated[bool, typer.Option("--refine/--no-refine", help="adaptive refinement rounds")] = True,
    drift: DriftToleranceOption = 0.2,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Profile --model (or a --spec grid) on several phones at once; tables stay apart by fingerprint."""
    from edgetrim.profiler.adb.multi import attached_targets, profile_phones
    from edgetrim.profiler.adb.runner import RunnerConfig
    from edgetrim.profiler.session import ProfileConfig, load_spec
    from edgetrim.profiler.timing import TimingConfig

    if (model is None) == (spec is None):
        raise EdgetrimError("pass exactly one of --model or --spec")
    names = list(target or attached_targets())
    bad = [n for n in names if not n.startswith("adb:")]
    if bad:
        raise EdgetrimError(f"profile-phones takes adb:SERIAL targets, got {', '.join(bad)}")
    if model is not None:
        from edgetrim.model_ops import extract_layer_ops, fusion_for_runtime
        from edgetrim.model_spec import load_model

        loaded = load_model(model, input_shape=parse_int_list(input_shape, what="--input-shape"))
        plan = extract_layer_ops(
            loaded.module, loaded.example_inputs, fusion=fusion_for_runtime("litert-benchmark_model")
        )
    else:
        plan = load_spec(spec)  # type: ignore[arg-type]
    results = profile_phones(
        names,
        plan,
        out_dir=out_dir,
        threads=threads,
        cores=parse_int_list(cores, what="--cores"),
        benchmark_binary=benchmark_binary,
        runner_config=RunnerConfig.from_env(),
        resume=resume,
        timing=TimingConfig.quick() if quick else TimingConfig(),
        refine=refine,
        config=ProfileConfig(
            max_points=max_points,
            points_per_context=48 if quick else ProfileConfig().points_per_context,
            refine_rounds=1 if quick else ProfileConfig().refine_rounds,
            drift_tolerance=drift_tolerance(drift),
        ),
    )
    failed = [r for r in results if r.error]
    if json_out:
        echo_json({"phones": [r.to_dict() for r in results]})
    else:
        for r in results:
            state = f"error: {r.error}" if r.error else "ok"
            typer.echo(f"{r.target:<24} {r.points:>5} points  {r.table_path}  {state}")
    if failed:
        raise typer.Exit(code=2)
