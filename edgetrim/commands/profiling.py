"""``edgetrim devices``, ``edgetrim profile`` and ``edgetrim measure``."""

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
    stdout_to_stderr,
)
from edgetrim.errors import EdgetrimError

ARTIFACT_SUFFIXES = (".onnx", ".tflite", ".pt2")


def register(app: typer.Typer) -> None:
    app.command("devices")(devices)
    app.command("profile")(profile)
    app.command("measure")(measure)


# Options shared by `profile` and `measure`.
BenchmarkBinaryOption = Annotated[
    Path | None,
    typer.Option(
        "--benchmark-binary",
        help="adb targets: LiteRT benchmark_model for the phone (default $EDGETRIM_BENCHMARK_MODEL)",
    ),
]


def _timing(quick: bool):  # -> TimingConfig
    from edgetrim.profiler.timing import TimingConfig

    return TimingConfig.quick() if quick else TimingConfig()


@cli_errors
def devices(
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    threads: Annotated[int, typer.Option("--threads", help="threads the fingerprints are for")] = 1,
    local_only: Annotated[bool, typer.Option("--local-only", help="skip phones and other listers")] = False,
) -> None:
    """List the targets available here (and attached phones) with their fingerprints."""
    from edgetrim.profiler.targets import list_devices

    with stdout_to_stderr():
        statuses = list_devices(threads=threads, local_only=local_only)
    if json_out:
        echo_json({"targets": [s.to_dict() for s in statuses]})
        return
    for s in statuses:
        detail = s.info.fingerprint() if s.available and s.info else s.reason
        typer.echo(f"{s.name:<14} {'yes' if s.available else 'no ':<4} {detail}")


@cli_errors
def profile(
    target: Annotated[str, typer.Option("--target", help="ort-cpu, litert-cpu, torch-cpu, adb:SERIAL, ...")],
    out: Annotated[Path, typer.Option("--out", help="table file to write (JSON)")],
    model: Annotated[str | None, typer.Option("--model", help="path/file.py:fn or package.module:fn")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="JSON grid file instead of --model")] = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="e.g. 1,3,64,64")] = None,
    threads: Annotated[int, typer.Option("--threads", help="runtime threads")] = 1,
    cores: Annotated[str | None, typer.Option("--cores", help="pin to these CPU cores, e.g. 0,1")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue OUT without re-measuring")] = False,
    max_points: Annotated[int | None, typer.Option("--max-points", help="cap on points in the table")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="coarse timing and small grids (smoke runs)")
    ] = False,
    refine: Annotated[bool, typer.Option("--refine/--no-refine", help="adaptive refinement rounds")] = True,
    seed: Annotated[int, typer.Option("--seed", help="seed of the measurement order")] = 0,
    passes: Annotated[
        int,
        typer.Option(
            "--passes", help="measure every point this many times, keep the lowest (shared machines)"
        ),
    ] = 1,
    drift: DriftToleranceOption = 0.2,
    benchmark_binary: BenchmarkBinaryOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON summary object")] = False,
) -> None:
    """Profile the op contexts of --model (each up to its layer widths) or a --spec grid into OUT."""
    from edgetrim.profiler.session import ProfileConfig, load_spec, profile_table
    from edgetrim.profiler.targets import get_target

    if (model is None) == (spec is None):
        raise EdgetrimError("pass exactly one of --model or --spec")
    if max_points is not None and max_points < 1:
        raise EdgetrimError(f"--max-points must be >= 1, got {max_points}")
    if passes < 1:
        raise EdgetrimError(f"--passes must be >= 1, got {passes}")
    with stdout_to_stderr():
        tgt = get_target(
            target,
            threads=threads,
            cores=parse_int_list(cores, what="--cores"),
            benchmark_binary=benchmark_binary,
        )
        if model is not None:
            from edgetrim.model_ops import extract_layer_ops
            from edgetrim.model_spec import load_model

            loaded = load_model(model, input_shape=parse_int_list(input_shape, what="--input-shape"))
            plan = extract_layer_ops(loaded.module, loaded.example_inputs, fusion=tgt.fusion)
        else:
            plan = load_spec(spec)  # type: ignore[arg-type]
        cfg = ProfileConfig(
            seed=seed,
            max_points=max_points,
            points_per_context=48 if quick else ProfileConfig().points_per_context,
            refine_rounds=1 if quick else ProfileConfig().refine_rounds,
            passes=passes,
            drift_tolerance=drift_tolerance(drift),
        )
        table = profile_table(
            tgt, plan, out=out, resume=resume, timing=_timing(quick), refine=refine, config=cfg
        )
    summary = {
        "out": str(out),
        "target": tgt.name,
        "fingerprint": table.device.fingerprint(),
        "contexts": len(table.contexts()),
        "points": table.n_points(),
        "points_measured": table.meta.get("points_measured_last_run", 0),
        "build_time_s": table.meta.get("build_time_s"),
        "invoke_overhead_ms": table.meta.get("invoke_overhead_ms"),
        "skipped_contexts": table.meta.get("skipped_contexts", {}),
        "resume_drift": table.meta.get("resume_drift"),
    }
    if json_out:
        echo_json(summary)
        return
    typer.echo(
        f"{out}: {summary['points']} points in {summary['contexts']} contexts on {summary['fingerprint']} "
        f"({summary['points_measured']} measured now, build time {summary['build_time_s']} s)"
    )
    found = summary["resume_drift"]  # not ``drift``: that is the --drift-tolerance value
    if found:
        verdict = f"started over (old table kept as {found['stale_copy']})" if found["restarted"] else "kept"
        typer.echo(
            f"resume check: {found['points']} stored points now time {found['low']:.2f}x-{found['high']:.2f}x "
            f"(quartiles) as stored; {verdict}"
        )
    for key, why in summary["skipped_contexts"].items():
        typer.echo(f"skipped {key}: {why}")


@cli_errors
def measure(
    target: Annotated[str, typer.Option("--target", help="ort-cpu, litert-cpu, torch-cpu, adb:SERIAL, ...")],
    model: Annotated[
        str, typer.Option("--model", help="path/file.py:fn, package.module:fn, or a .onnx/.tflite/.pt2 file")
    ],
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="e.g. 1,3,64,64")] = None,
    threads: Annotated[int, typer.Option("--threads", help="runtime threads")] = 1,
    cores: Annotated[str | None, typer.Option("--cores", help="pin to these CPU cores, e.g. 0,1")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="coarse timing")] = False,
    benchmark_binary: BenchmarkBinaryOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object (median_ms, ...)")] = False,
) -> None:
    """Run --model on --target (converted to that runtime) and print its latency distribution."""
    from edgetrim.profiler.targets import get_target

    with stdout_to_stderr():
        tgt = get_target(
            target,
            threads=threads,
            cores=parse_int_list(cores, what="--cores"),
            benchmark_binary=benchmark_binary,
        )
        timing = _timing(quick)
        if model.endswith(ARTIFACT_SUFFIXES) and ":" not in Path(model).name:
            stats = tgt.measure_artifact(Path(model), timing)
        else:
            from edgetrim.model_spec import load_model

            loaded = load_model(model, input_shape=parse_int_list(input_shape, what="--input-shape"))
            stats = tgt.measure_model(loaded.module, loaded.example_inputs, timing)
        info = tgt.info()
    if json_out:
        echo_json({"target": tgt.name, "model": model, **stats.to_dict(), "fingerprint": info.fingerprint(),
                   "device": info.to_dict()})  # fmt: skip
        return
    typer.echo(
        f"{model} on {info.fingerprint()}: median {stats.median_ms:.4f} ms "
        f"(p10 {stats.p10_ms:.4f}, p90 {stats.p90_ms:.4f}, n={stats.n})"
    )
