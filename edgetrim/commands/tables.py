"""``edgetrim tables show|plot|validate|merge`` and ``edgetrim predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgetrim.commands._common import cli_errors, echo_json, parse_int_list, stdout_to_stderr
from edgetrim.errors import EdgetrimError, TableError
from edgetrim.lookup_tables import LatencyTable, check_target, load_table, merge, predict_model

tables_app = typer.Typer(no_args_is_help=True, help="Inspect, plot, validate and merge latency tables.")


def register(app: typer.Typer) -> None:
    app.add_typer(tables_app, name="tables")
    app.command("predict")(predict)


def _context_summary(table: LatencyTable) -> list[dict[str, Any]]:
    out = []
    for ctx in table.contexts():
        pts = table.points(ctx)
        interp = table.interpolator(ctx)
        med = [s.median_ms for _, _, s in pts]
        out.append(
            {
                "key": ctx.key(),
                "kind": ctx.kind.value,
                "points": len(pts),
                "max_in": table.max_widths(ctx)[0],
                "max_out": table.max_widths(ctx)[1],
                "in_rule": str(interp.in_rule),
                "out_rule": str(interp.out_rule),
                "min_ms": min(med),
                "max_ms": max(med),
            }
        )
    return out


@tables_app.command("show")
@cli_errors
def show(
    table: Annotated[Path, typer.Argument(help="table file")],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Print a table's device, metadata and contexts (points, widths, interpolation rules)."""
    t = load_table(table)
    info = {
        "path": str(table),
        "fingerprint": t.device.fingerprint(),
        "device": t.device.to_dict(),
        "created": t.created,
        "points": t.n_points(),
        "meta": t.meta,
        "contexts": _context_summary(t),
    }
    if json_out:
        echo_json(info)
        return
    typer.echo(f"{table}: {info['points']} points, {len(info['contexts'])} contexts, created {t.created}")
    typer.echo(f"device: {info['fingerprint']} ({t.device.runtime} {t.device.runtime_version})")
    if "build_time_s" in t.meta:
        typer.echo(f"build time: {t.meta['build_time_s']} s")
    for c in info["contexts"]:
        typer.echo(
            f"  {c['key']:<48} {c['points']:>5} pts  in<={c['max_in']:<5} out<={c['max_out']:<5} "
            f"rules {c['in_rule']}/{c['out_rule']}  {c['min_ms']:.4f}..{c['max_ms']:.4f} ms"
        )


@tables_app.command("plot")
@cli_errors
def plot(
    table: Annotated[Path, typer.Argument(help="table file")],
    out: Annotated[Path, typer.Option("--out", help="PNG file (with --context) or folder (all contexts)")],
    context: Annotated[str | None, typer.Option("--context", help="context key (see `tables show`)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Write a PNG of one context's surface, or one PNG per context into a folder."""
    from edgetrim.lookup_tables.plot import plot_all, plot_context

    t = load_table(table)
    if context is not None:
        if out.is_dir():
            raise EdgetrimError(f"--out {out} is a folder; with --context give a .png file name")
        written = [plot_context(t, t.context_by_key(context), out)]
    else:
        if out.exists() and not out.is_dir():
            raise EdgetrimError(
                f"--out {out} is a file; without --context give a folder for one PNG per context"
            )
        written = plot_all(t, out)
    if json_out:
        echo_json({"files": [str(p) for p in written]})
        return
    for p in written:
        typer.echo(str(p))


@tables_app.command("validate")
@cli_errors
def validate(
    table: Annotated[Path, typer.Argument(help="table file")],
    target: Annotated[str, typer.Option("--target", help="the target the table was made on, e.g. ort-cpu")],
    points: Annotated[int, typer.Option("--points", help="held-out points to measure")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="seed of the point choice")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="coarse timing")] = False,
    allow_other_target: Annotated[
        bool, typer.Option("--allow-other-target", help="validate even if the table is from elsewhere")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Measure random held-out points on TARGET and report the table's interpolation error."""
    from edgetrim.lookup_tables.metrics import validate_table
    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    if points < 1:
        raise EdgetrimError(f"--points must be >= 1, got {points}")
    t = load_table(table)
    check_target(t, target, allow_other=allow_other_target)
    with stdout_to_stderr():
        tgt = get_target(target, threads=t.device.threads)
        check_target(t, tgt.info(), allow_other=allow_other_target)
        timing = TimingConfig.quick() if quick else TimingConfig()
        try:
            report = validate_table(t, tgt, n_points=points, timing=timing, seed=seed)
        except ValueError as exc:
            raise TableError(f"{table}: {exc}") from None
    report = {"table": str(table), "target": target, **report}
    if json_out:
        echo_json(report)
        return
    typer.echo(
        f"{report['n']} held-out points on {target}: MAPE {report['mape_pct']:.1f}%, "
        f"{100 * report['within_10pct']:.0f}% within +-10%, worst {report['max_abs_err_pct']:.1f}%"
    )
    for key, s in report["by_context"].items():
        typer.echo(
            f"  {key:<48} n={s['n']:<3} MAPE {s['mape_pct']:6.1f}%  worst {s['max_abs_err_pct']:6.1f}%"
        )


@tables_app.command("merge")
@cli_errors
def merge_cmd(
    tables: Annotated[list[Path], typer.Argument(help="table files to merge (same target)")],
    out: Annotated[Path, typer.Option("--out", help="merged table file")],
    force: Annotated[bool, typer.Option("--force", help="merge tables of different targets")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Merge tables of one target; a point in several keeps the one with more samples (then the later)."""
    merged = merge([load_table(p) for p in tables], force=force)
    merged.save(out)
    info = {
        "out": str(out),
        "contexts": len(merged.contexts()),
        "points": merged.n_points(),
        "inputs": len(tables),
    }
    if json_out:
        echo_json(info)
        return
    typer.echo(f"{out}: {info['points']} points in {info['contexts']} contexts from {len(tables)} tables")


@cli_errors
def predict(
    table: Annotated[Path, typer.Option("--table", help="latency table of the target")],
    model: Annotated[str, typer.Option("--model", help="path/file.py:fn or package.module:fn")],
    input_shape: Annotated[str | None, typer.Option("--input-shape", help="e.g. 1,3,64,64")] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="the target to predict for (checked against the table)")
    ] = None,
    allow_other_target: Annotated[
        bool, typer.Option("--allow-other-target", help="use a table made on another target")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="print one JSON object (total_ms, layers, ...)")
    ] = False,
) -> None:
    """Predict --model's latency from --table: per-layer breakdown, total, uncovered share."""
    from edgetrim.model_ops import fusion_for_runtime
    from edgetrim.model_spec import load_model

    t = load_table(table)
    if target is not None:
        check_target(t, target, allow_other=allow_other_target)
    with stdout_to_stderr():
        loaded = load_model(model, input_shape=parse_int_list(input_shape, what="--input-shape"))
        from edgetrim.model_ops import extract_layer_ops

        ops = extract_layer_ops(
            loaded.module, loaded.example_inputs, fusion=fusion_for_runtime(t.device.runtime)
        )
    pred = predict_model(t, ops)
    if json_out:
        echo_json({"model": model, "table": str(table), **pred.to_dict()})
        return
    for r in pred.rows:
        flag = " (extrapolated)" if r.extrapolated else ("" if r.covered else " (uncovered)")
        typer.echo(
            f"  {r.name:<36} {r.context_key:<44} {r.in_width:>5}->{r.out_width:<5} {r.ms:9.4f} ms{flag}"
        )
    typer.echo(
        f"total {pred.total_ms:.4f} ms on {pred.device} (uncovered share {100 * pred.uncovered_share:.1f}%, "
        f"extrapolated share {100 * pred.extrapolated_share:.1f}%)"
    )
