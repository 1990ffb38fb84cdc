"""``edgetrim sparsify`` (sparse training into a RUN folder) and ``edgetrim sparsity-check``.

``sparsify`` trains a sparse model with any preset of ``edgetrim.compress.sparse`` and prints one line
per epoch (loss, accuracy, density, predicted latency). ``sparsity-check`` measures, on a target, a
dense layer against its sparse form at several densities, so users know before training whether
unstructured sparsity buys anything on that runtime.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from edgetrim.commands._common import cli_errors, echo_json, parse_enum, stdout_to_stderr
from edgetrim.errors import EdgetrimError


def register(app: typer.Typer) -> None:
    app.command("sparsify")(sparsify)
    app.command("sparsity-check")(sparsity_check)


@cli_errors
def sparsify(
    model: Annotated[
        str, typer.Option("--model", help="zoo name (lenet5, lenet_300_100, ...) or module:fn / file.py:fn")
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data", help="a built-in data set (digits, digits_flat, ...), module:fn or file.py:fn"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="RUN folder to write")],
    method: Annotated[
        str, typer.Option("--method", help="gmp, granet, rigl, set, static, pai, lottery, freeze, bn_only")
    ] = "granet",
    sparsity: Annotated[
        float, typer.Option("--sparsity", help="fraction of conv/linear weights removed, in [0, 1)")
    ] = 0.9,
    granularity: Annotated[
        str, typer.Option("--granularity", help="unstructured, 2:4, 1:4 or channel")
    ] = "unstructured",
    allocation: Annotated[
        str | None,
        typer.Option("--allocation", help="global, uniform, erk, er, latency (default: per method)"),
    ] = None,
    table: Annotated[
        Path | None, typer.Option("--table", help="latency table: predicted latency, latency allocation")
    ] = None,
    budget_ms: Annotated[
        float | None, typer.Option("--budget-ms", help="latency budget for --allocation latency")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 20,
    lr: Annotated[float, typer.Option("--lr")] = 0.1,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd, adam, adamw")] = "sgd",
    init_sparsity: Annotated[float, typer.Option("--init-sparsity", help="GraNet s_i (0 or 0.5)")] = 0.0,
    criterion: Annotated[
        str, typer.Option("--criterion", help="pai/freeze score: snip, grasp, synflow, magnitude, random")
    ] = "snip",
    pai_rounds: Annotated[
        int, typer.Option("--pai-rounds", help="1 one-shot; >1 iterative (SynFlow: 100)")
    ] = 1,
    synflow_zero_bias: Annotated[
        bool, typer.Option("--synflow-zero-bias", help="score SynFlow with biases zeroed")
    ] = False,
    rewind: Annotated[str, typer.Option("--rewind", help="lottery: init, iteration, lr")] = "init",
    rewind_iteration: Annotated[int, typer.Option("--rewind-iteration")] = 0,
    imp_rounds: Annotated[
        int | None, typer.Option("--imp-rounds", help="lottery rounds (default: to reach --sparsity)")
    ] = None,
    batches_per_epoch: Annotated[
        int | None, typer.Option("--batches-per-epoch", help="cap per epoch (quick runs)")
    ] = None,
    exclude: Annotated[str, typer.Option("--exclude", help="comma-separated module names kept dense")] = "",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: Annotated[
        bool, typer.Option("--json", help="print the run summary as one JSON object")
    ] = False,
) -> None:
    """Train a sparse model with METHOD and save it as a RUN folder (kind "sparsify")."""
    import torch

    from edgetrim.compress.sparse.allocation import Allocation
    from edgetrim.compress.sparse.config import Granularity, Method, Optim, Rewind, SparsifyConfig
    from edgetrim.compress.sparse.criteria import Criterion
    from edgetrim.compress.sparse.loop import evaluate
    from edgetrim.compress.sparse.methods import sparsify as run_sparsify
    from edgetrim.compress.sparse.report import save_sparsify_run
    from edgetrim.examples.data import load_data
    from edgetrim.model_spec import load_model, resolve_spec

    if not (0.0 <= sparsity < 1.0) or math.isnan(sparsity):
        raise EdgetrimError(f"--sparsity must be in [0, 1) (fraction of weights removed), got {sparsity}")
    try:
        cfg = SparsifyConfig(
            method=parse_enum(method, Method, "--method"),
            sparsity=sparsity,
            granularity=parse_enum(granularity, Granularity, "--granularity"),
            allocation=parse_enum(allocation, Allocation, "--allocation") if allocation else None,
            budget_ms=budget_ms,
            epochs=epochs,
            lr=lr,
            optimizer=parse_enum(optimizer, Optim, "--optimizer"),
            init_sparsity=init_sparsity,
            criterion=parse_enum(criterion, Criterion, "--criterion"),
            pai_rounds=pai_rounds,
            synflow_zero_bias=synflow_zero_bias,
            rewind=parse_enum(rewind, Rewind, "--rewind"),
            rewind_iteration=rewind_iteration,
            imp_rounds=imp_rounds,
            batches_per_epoch=batches_per_epoch,
            exclude=tuple(e for e in exclude.split(",") if e),
            seed=seed,
        )
    except ValueError as exc:
        raise EdgetrimError(str(exc)) from None
    tab = None
    if table is not None:
        from edgetrim.lookup_tables import load_table

        tab = load_table(table)
    spec = resolve_spec(model)
    torch.manual_seed(seed)
    loaded = load_model(spec)
    train_loader, val_loader = load_data(data)
    x0, _ = next(iter(train_loader))
    try:
        with torch.no_grad():
            loaded.module.eval()(x0[:2])
    except Exception as exc:
        raise EdgetrimError(
            f"{spec} cannot run on {data} batches of shape {tuple(x0.shape)} ({type(exc).__name__}); "
            f"MLPs take --data digits_flat, CNNs --data digits"
        ) from None
    widths_before = {
        n: int(getattr(m, "out_features", getattr(m, "out_channels", 0)))
        for n, m in loaded.module.named_modules()
        if hasattr(m, "out_features") or hasattr(m, "out_channels")
    }
    _, dense_acc = evaluate(loaded.module, val_loader)

    def on_epoch(row: dict[str, Any]) -> None:
        if json_out:
            return
        pred = row.get("predicted_ms", report_pred[0])
        pred_s = f"  predicted {pred:.4f} ms" if pred is not None else ""
        phase = f" [{row['phase']}]" if row.get("phase") else ""
        typer.echo(
            f"epoch {row['epoch']:>3}/{epochs}{phase}  loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"acc {row['val_accuracy']:.4f}  density {row['density']:.4f}{pred_s}"
        )

    report_pred: list[float | None] = [None]
    if tab is not None and cfg.granularity is not Granularity.CHANNEL:
        from edgetrim.compress.sparse.methods import _predict_dense_ms

        report_pred[0] = _predict_dense_ms(loaded.module, loaded.example_inputs, tab)
    from tqdm import tqdm

    with tqdm(
        total=None, desc=f"sparsify {cfg.method.value}", unit="step", leave=False, disable=json_out
    ) as bar:
        report = run_sparsify(
            loaded.module,
            cfg,
            train_loader=train_loader,
            val_loader=val_loader,
            table=tab,
            example_inputs=loaded.example_inputs,
            on_epoch=on_epoch,
            progress=bar,
        )
    save_sparsify_run(
        out,
        report,
        loaded.example_inputs,
        model_spec=spec,
        data_spec=data,
        dense_accuracy=dense_acc,
        widths_before=widths_before,
    )
    summary = {
        "run": str(out),
        "method": cfg.method.value,
        "granularity": cfg.granularity.value,
        "accuracy": report.accuracy,
        "density": report.density,
        "total_nnz": report.total_nnz,
        "collapsed": report.collapsed,
        "predicted_ms": report.predicted_ms,
        "dense_predicted_ms": report.dense_predicted_ms,
        "train_flops": report.cost["train_flops"] + report.cost["scoring_flops"],
        "dense_gradient_steps": report.cost["dense_gradient_steps"],
        "trainings": report.trainings,
    }
    if json_out:
        echo_json(summary)
        return
    typer.echo(
        f"done: accuracy {report.accuracy:.4f} (dense init {dense_acc:.4f}), density {report.density:.4f} "
        f"({report.total_nnz}/{report.total_numel} masked-layer weights), trainings {report.trainings}"
    )
    if report.collapsed:
        typer.echo(f"warning: layer collapse in {', '.join(report.collapsed)}")
    for note in report.notes:
        if note:
            typer.echo(f"note: {note}")
    typer.echo(f"run: {out}  (cost: {out / 'sparse_cost.json'}, plot: {out / 'sparse_density.png'})")


# --------------------------------------------------------------------------- sparsity-check
def _linear_onnx(weight: Any, bias: Any, tokens: int, *, sparse: bool) -> bytes:
    """y = x W^T + b as ONNX MatMul + Add, W stored dense or as a sparse initializer (COO)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    wt = np.ascontiguousarray(weight.T.astype(np.float32))  # (in, out)
    in_f, out_f = wt.shape
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, in_f])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, out_f])
    b_init = numpy_helper.from_array(bias.astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    if sparse:
        flat = wt.reshape(-1)
        idx = np.nonzero(flat)[0].astype(np.int64)
        values = numpy_helper.from_array(flat[idx], "W")
        indices = numpy_helper.from_array(idx, "W_indices")
        sp = helper.make_sparse_tensor(values, indices, [in_f, out_f])
        graph = helper.make_graph(
            nodes, "sparse_linear", [x], [y], initializer=[b_init], sparse_initializer=[sp]
        )
    else:
        graph = helper.make_graph(
            nodes, "dense_linear", [x], [y], initializer=[numpy_helper.from_array(wt, "W"), b_init]
        )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _parse_densities(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EdgetrimError(f"--densities must be comma-separated numbers in (0, 1], got {text!r}") from None
    if not vals or any(not (0.0 < v <= 1.0) for v in vals):
        raise EdgetrimError(f"--densities must be comma-separated numbers in (0, 1], got {text!r}")
    return vals


def run_sparsity_check(
    target_name: str,
    densities: list[float],
    *,
    width: int,
    tokens: int,
    threads: int = 1,
    quick: bool = False,
    rounds: int = 3,
) -> dict[str, Any]:
    """Measure a width x width linear layer at each density on the target (see module doc).

    Every form is measured ``rounds`` times, interleaved in rotating order so drift and warm-up do not
    favour one density; a speed-up counts only when its median over rounds is >= 1.2x and every round
    shows >= 1.1x.
    """
    import statistics
    import tempfile

    import numpy as np
    import torch
    from torch import nn

    from edgetrim.profiler.targets import get_target
    from edgetrim.profiler.timing import TimingConfig

    target = get_target(target_name, threads=threads)
    timing = (
        TimingConfig(warmup=3, min_runs=5, max_runs=30, time_cap_s=0.3)
        if quick
        else TimingConfig(time_cap_s=1.0)
    )
    rng = np.random.default_rng(0)
    is_ort = getattr(target, "runtime", "") == "onnxruntime"
    dens = sorted(set(densities), reverse=True)
    samples: dict[tuple[float, str], list[float]] = {}
    nnz: dict[float, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs: list[tuple[float, str, Any]] = []
        for d in dens:
            w = rng.standard_normal((width, width)).astype(np.float32)
            w *= rng.random((width, width)) < d
            b = rng.standard_normal(width).astype(np.float32)
            nnz[d] = int((w != 0).sum())
            layer = nn.Linear(width, width)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w))
                layer.bias.copy_(torch.from_numpy(b))
            jobs.append((d, "zeros_in_dense_ms", layer.eval()))
            if is_ort:
                for kind, sparse in (("dense_initializer_ms", False), ("sparse_initializer_ms", True)):
                    path = Path(tmp) / f"{kind}_{d}.onnx"
                    path.write_bytes(_linear_onnx(w, b, tokens, sparse=sparse))
                    jobs.append((d, kind, path))
        x = (torch.randn(tokens, width),)
        for r in range(rounds):
            shift = r % len(jobs)
            for d, kind, obj in jobs[shift:] + jobs[:shift]:
                if isinstance(obj, nn.Module):
                    ms = target.measure_model(obj, x, timing).median_ms
                else:
                    ms = target.measure_artifact(obj, timing).median_ms
                samples.setdefault((d, kind), []).append(ms)
    kinds = list(dict.fromkeys(k for _, k, _ in jobs))
    base_d = dens[0]
    rows = []
    best, pays = 0.0, False
    for d in dens:
        row: dict[str, Any] = {"density": d, "nnz": nnz[d]}
        for k in kinds:
            vals = samples[(d, k)]
            base = samples[(base_d, k)]
            ratios = [bv / v for bv, v in zip(base, vals) if v > 0]
            row[k] = statistics.median(vals)
            row[k.replace("_ms", "_speedup")] = statistics.median(ratios)
            row[k.replace("_ms", "_speedup_min")] = min(ratios)
            if d != base_d:
                best = max(best, row[k.replace("_ms", "_speedup")])
                pays = pays or (statistics.median(ratios) >= 1.2 and min(ratios) >= 1.1)
        rows.append(row)
    why = "a dense kernel runs the zeros" + (
        "; onnxruntime densifies sparse initializers at load" if is_ort else ""
    )
    if pays:
        verdict = f"unstructured sparsity pays off on {target_name}: best median speed-up {best:.2f}x over density {base_d}"
    else:
        verdict = (
            f"unstructured sparsity buys nothing on {target_name}: best median speed-up {best:.2f}x over "
            f"density {base_d}, not consistent across {rounds} rounds ({why})"
        )
    return {
        "target": target_name,
        "device": target.info().to_dict(),
        "layer": {"kind": "linear", "in": width, "out": width, "tokens": tokens},
        "rounds": rounds,
        "rows": rows,
        "best_speedup": best,
        "pays_off": pays,
        "verdict": verdict,
    }


@cli_errors
def sparsity_check(
    target: Annotated[str, typer.Option("--target", help="torch-cpu, ort-cpu, litert-cpu, adb:SERIAL, ...")],
    densities: Annotated[
        str, typer.Option("--densities", help="comma-separated densities in (0, 1]")
    ] = "1,0.5,0.1",
    width: Annotated[int, typer.Option("--width", help="linear layer in = out features")] = 512,
    tokens: Annotated[int, typer.Option("--tokens", help="rows of the input (batch x sequence)")] = 32,
    threads: Annotated[int, typer.Option("--threads")] = 1,
    quick: Annotated[bool, typer.Option("--quick", help="fewer timing samples")] = False,
    rounds: Annotated[int, typer.Option("--rounds", help="interleaved measurement rounds")] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Measure a dense layer against its sparse forms at several densities on TARGET."""
    if width < 1 or tokens < 1:
        raise EdgetrimError(f"--width and --tokens must be >= 1, got {width}, {tokens}")
    dens = _parse_densities(densities)
    if 1.0 not in dens:
        dens = [1.0, *dens]
    if rounds < 1:
        raise EdgetrimError(f"--rounds must be >= 1, got {rounds}")
    if json_out and target.startswith("litert"):
        with contextlib.suppress(Exception):  # litert-torch prints conversion progress with rich
            from litert_torch import _config as litert_config

            litert_config.config.show_progress = False
    with stdout_to_stderr() if json_out else contextlib.nullcontext():
        result = run_sparsity_check(
            target, dens, width=width, tokens=tokens, threads=threads, quick=quick, rounds=rounds
        )
    if json_out:
        echo_json(result)
        return
    keys = [k for k in result["rows"][0] if k.endswith("_ms")]
    typer.echo(
        f"{target}: linear {width}x{width}, {tokens} rows, median ms over {rounds} rounds (speed-up vs dense)"
    )
    typer.echo("density  " + "  ".join(f"{k[:-3]:>24}" for k in keys))
    for r in result["rows"]:
        cells = "  ".join(f"{r[k]:>15.4f} ({r[k.replace('_ms', '_speedup')]:.2f}x)" for k in keys)
        typer.echo(f"{r['density']:<7}  {cells}")
    typer.echo(result["verdict"])
