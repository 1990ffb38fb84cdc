"""``edgetrim export``, ``edgetrim report`` and ``edgetrim demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgetrim.commands._common import cli_errors, echo_json


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("report")(report)
    app.command("demo")(demo)


@cli_errors
def export(
    run: Annotated[Path, typer.Argument(help="RUN folder written by compress / sparsify / ...")],
    out: Annotated[
        Path, typer.Option("--out", help="folder for the artifacts, manifest.json and the report")
    ],
    format: Annotated[str, typer.Option("--format", help="comma-separated: onnx, tflite")] = "onnx,tflite",
    int8: Annotated[
        bool, typer.Option("--int8", help="also write int8 artifacts (calibrated on --data)")
    ] = False,
    data: Annotated[
        str | None, typer.Option("--data", help="data spec for calibration and accuracy, e.g. digits")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="re-measure on this target (default: the table's)")
    ] = None,
    table: Annotated[
        Path | None, typer.Option("--table", help="latency table for predictions (default: the run's)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the manifest as one JSON object")] = False,
) -> None:
    """Export RUN to ONNX / TFLite, check parity, re-measure, and write manifest + report into OUT."""
    from edgetrim.deploy.bundle import ExportConfig, export_run, parse_formats
    from edgetrim.deploy.manifest import load_manifest

    cfg = ExportConfig(formats=parse_formats(format), int8=int8, data=data, target=target, table=table)
    bundle = export_run(run, out, cfg)
    if json_out:
        echo_json(load_manifest(out))
        return
    for art in bundle.artifacts:
        rm = next((r for r in bundle.remeasured if r.label == art.label), None)
        measured = f", measured {rm.measured_ms:.4f} ms on {rm.target}" if rm else ""
        predicted = f" (predicted {rm.predicted_ms:.4f} ms)" if rm and rm.predicted_ms is not None else ""
        typer.echo(
            f"{art.label}: {art.path}  parity {art.parity['gate'] if art.parity else '-'}{measured}{predicted}"
        )
    for note in bundle.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"manifest: {bundle.manifest_path}")
    if bundle.report_path:
        typer.echo(f"report:   {bundle.report_path}")


@cli_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="RUN folders and/or 'edgetrim export' folders")],
    out: Annotated[Path, typer.Option("--out", help="folder for report.html and report.json")],
    table: Annotated[
        Path | None, typer.Option("--table", help="latency table whose surfaces to plot (default: the runs')")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json's content")] = False,
) -> None:
    """Write a self-contained HTML report (Pareto front, per-layer latency, widths, table surfaces)."""
    import json

    from edgetrim.deploy.report import run_entry, write_report
    from edgetrim.lookup_tables import load_table

    entries = [run_entry(r) for r in runs]
    if table is None:  # the first run that names a table still on disk
        named = (Path(str(e.get("run", {}).get("table") or "")) for e in entries)
        table = next((p for p in named if p.name and p.is_file()), None)
    files = write_report(entries, out, table=load_table(table) if table is not None else None)
    if json_out:
        echo_json(json.loads(files.json.read_text()))
        return
    typer.echo(f"report: {files.html}")
    typer.echo(f"data:   {files.json}")


@cli_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="folder for everything the demo writes")] = Path(
        "demo_out"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="a smaller, faster run (coarser table, fewer epochs)")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as one JSON object")] = False,
) -> None:
    """Profile this CPU, train the digits CNN, compress it to 50% latency, export, re-measure, report."""
    from edgetrim.deploy.demo import DemoConfig, run_demo

    result = run_demo(out, DemoConfig.quick() if quick else DemoConfig())
    if json_out:
        echo_json(result.to_dict())
        return
    for line in result.summary_lines():
        typer.echo(line)
