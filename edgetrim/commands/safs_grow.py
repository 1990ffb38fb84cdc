"""``edgetrim safs`` (activation search for sparse nets) and ``edgetrim grow`` (budgeted growth)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from edgetrim.commands._common import cli_errors, echo_json, parse_enum, parse_int_list
from edgetrim.errors import EdgetrimError

logger = logging.getLogger(__name__)


def _tensors(loader: Any) -> tuple[Any, Any]:
    import torch

    xs, ys = zip(*[(xb, yb) for xb, yb in loader], strict=True)
    return torch.cat(xs), torch.cat(ys)


def _load_table(path: Path | None) -> Any | None:
    if path is None:
        return None
    from edgetrim.lookup_tables import load_table

    return load_table(path)


def _fusion_for(table: Any) -> Any:
    """The fusion rules of the runtime the table was measured on."""
    from edgetrim.model_ops import fusion_for_runtime

    return fusion_for_runtime(table.device.runtime)


def _predict_ms(table: Any, model: Any, example: tuple[Any, ...]) -> float:
    from edgetrim.lookup_tables import predict_model
    from edgetrim.model_ops import extract_layer_ops

    return float(predict_model(table, extract_layer_ops(model, example, fusion=_fusion_for(table))).total_ms)


def register(app: typer.Typer) -> None:
    @app.command("safs")
    @cli_errors
    def safs(
        model: Annotated[
            str, typer.Option("--model", help="zoo name, module:fn / file.py:fn spec, or a RUN folder")
        ],
        data: Annotated[
            str, typer.Option("--data", help="data spec returning (train_loader, held-out loader)")
        ],
        out: Annotated[Path, typer.Option("--out", help="RUN folder to write (re-run to resume stage 1)")],
        sparsity: Annotated[
            float, typer.Option("--sparsity", help="one-shot magnitude pruning ratio")
        ] = 0.99,
        scope: Annotated[str, typer.Option("--scope", help="layer (SAFS default) or global")] = "layer",
        stage1_evals: Annotated[int, typer.Option("--stage1-evals", help="stage-1 search evaluations")] = 20,
        stage2_trials: Annotated[int, typer.Option("--stage2-trials", help="stage-2 HPO trials")] = 20,
        algorithm: Annotated[
            str, typer.Option("--algorithm", help="lahc, random, genetic, annealing")
        ] = "lahc",
        hpo: Annotated[str, typer.Option("--hpo", help="auto, optuna (TPE) or random")] = "auto",
        folds: Annotated[int, typer.Option("--folds")] = 3,
        stage1_epochs: Annotated[int, typer.Option("--stage1-epochs")] = 3,
        finetune_epochs: Annotated[int, typer.Option("--finetune-epochs")] = 20,
        pretrain_epochs: Annotated[
            int, typer.Option("--pretrain-epochs", help="dense training of a factory model")
        ] = 20,
        mask_from_model: Annotated[
            bool,
            typer.Option("--mask-from-model", help="keep the model's own zeros as the mask (a sparsify RUN)"),
        ] = False,
        no_stage1: Annotated[bool, typer.Option("--no-stage1")] = False,
        no_stage2: Annotated[bool, typer.Option("--no-stage2")] = False,
        table: Annotated[
            Path | None, typer.Option("--table", help="latency table to price activations")
        ] = None,
        budget_ms: Annotated[
            float | None, typer.Option("--budget-ms", help="latency budget for the search")
        ] = None,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Search per-layer activations and their scales for a highly sparse model (SAFS)."""
        import torch

        from edgetrim.compress.run_folder import load_run, save_run
        from edgetrim.compress.safs import (
            SafsConfig,
            SearchAlgorithm,
            SearchConfig,
            pretrain_dense_,
            run_safs,
        )
        from edgetrim.compress.safs.hpo import HPOBackend, HPOConfig
        from edgetrim.compress.safs.train import FinetuneConfig, PruneScope, masks_from_weights
        from edgetrim.examples.data import load_data
        from edgetrim.model_spec import load_model

        if budget_ms is not None and table is None:
            raise EdgetrimError("--budget-ms needs --table T to price the activations")
        torch.manual_seed(seed)
        train_loader, test_loader = load_data(data)
        train, test = _tensors(train_loader), _tensors(test_loader)
        if Path(model).is_dir():
            run = load_run(model)
            dense, example = run.model, run.example_inputs
        else:
            loaded = load_model(model)
            dense, example = loaded.module, loaded.example_inputs
            typer.echo(f"training the dense model for {pretrain_epochs} epochs", err=True)
            pretrain_dense_(dense, train, FinetuneConfig(epochs=pretrain_epochs), seed=seed)
        dense.eval()
        tab = _load_table(table)
        base_ms = _predict_ms(tab, dense, example) if tab is not None else 0.0
        cfg = SafsConfig(
            sparsity=sparsity,
            scope=parse_enum(scope, PruneScope, "--scope"),
            stage1=not no_stage1,
            stage2=not no_stage2,
            search=SearchConfig(
                algorithm=parse_enum(algorithm, SearchAlgorithm, "--algorithm"),
                max_evals=stage1_evals,
                seed=seed,
            ),
            stage1_epochs=stage1_epochs,
            hpo=HPOConfig(
                trials=stage2_trials, folds=folds, backend=parse_enum(hpo, HPOBackend, "--hpo"), seed=seed
            ),
            finetune=FinetuneConfig(epochs=finetune_epochs),
            latency_budget_ms=budget_ms,
            seed=seed,
        )
        out.mkdir(parents=True, exist_ok=True)
        masks = masks_from_weights(dense) if mask_from_model else None
        final, report = run_safs(
            dense,
            example,
            train,
            test,
            cfg,
            masks=masks,
            table=tab,
            base_ms=base_ms,
            state_dir=out,
            progress=lambda msg: typer.echo(msg, err=True),
        )
        info = {
            "kind": "safs",
            "model_spec": model,
            "data_spec": data,
            "budget": {"sparsity": report.sparsity, "latency_ms": budget_ms},
            "predicted_ms": report.predicted_ms,
            "dense_predicted_ms": base_ms if tab is not None else None,
            "accuracy": report.test_accuracy,
            "dense_accuracy": report.dense_test_accuracy,
            "widths_before": None,
            "widths_after": None,
            "config": cfg.to_dict(),
            "history": (report.stage1 or {}).get("log", []),
            "safs": report.to_dict(),
        }
        save_run(out, final, example, info)
        summary = {
            "out": str(out),
            "accuracy": report.test_accuracy,
            "dense_accuracy": report.dense_test_accuracy,
            "sparsity": report.sparsity,
            "chromosome": report.chromosome,
            "predicted_ms": report.predicted_ms,
        }
        if as_json:
            echo_json(summary)
        else:
            typer.echo(
                f"SAFS: accuracy {report.test_accuracy:.4f} (dense {report.dense_test_accuracy:.4f}) at sparsity "
                f"{report.sparsity:.4f}; activations {', '.join(report.chromosome)} -> {out}"
            )

    @app.command("grow")
    @cli_errors
    def grow(
        data: Annotated[
            str, typer.Option("--data", help="data spec returning (train_loader, held-out loader)")
        ],
        out: Annotated[Path, typer.Option("--out", help="RUN folder to write")],
        budget_params: Annotated[
            float | None, typer.Option("--budget-params", help="fraction of the full net's parameters")
        ] = None,
        budget_flops: Annotated[
            float | None, typer.Option("--budget-flops", help="MACs: a fraction (<= 1) or a count")
        ] = None,
        budget_ms: Annotated[
            float | None, typer.Option("--budget-ms", help="latency budget (needs --table)")
        ] = None,
        table: Annotated[Path | None, typer.Option("--table", help="latency table for --budget-ms")] = None,
        widths: Annotated[
            str, typer.Option("--widths", help="maximum width of every conv layer")
        ] = "32,32,64,64",
        pool_after: Annotated[
            str, typer.Option("--pool-after", help="indices of layers followed by 2x2 max pooling")
        ] = "1",
        layer_gated: Annotated[
            str, typer.Option("--layer-gated", help="indices of layers that may be skipped")
        ] = "",
        epochs: Annotated[int, typer.Option("--epochs")] = 30,
        finetune_epochs: Annotated[
            int,
            typer.Option(
                "--finetune-epochs",
                help="fine-tune the materialised net (SGD + cosine from 0.05); a latency fit that changes "
                "the widths fine-tunes at least 1 epoch",
            ),
        ] = 0,
        lambda_base: Annotated[
            float, typer.Option("--lambda-base", help="lambda1_base of the budget controller")
        ] = 3.0,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Grow a plain CNN from one filter per layer to a parameter, FLOPs or latency budget."""
        import torch

        from edgetrim.compress.grow import BudgetKind, GrowConfig, GrowNet, GrowNetSpec, ResourceMeter, grow_
        from edgetrim.compress.run_folder import save_run
        from edgetrim.examples.data import load_data

        given = [
            (k, v)
            for k, v in (("params", budget_params), ("flops", budget_flops), ("latency", budget_ms))
            if v is not None
        ]
        if len(given) != 1:
            raise EdgetrimError("give exactly one of --budget-params, --budget-flops, --budget-ms")
        kind, value = given[0]
        torch.manual_seed(seed)
        train_loader, test_loader = load_data(data)
        train, test = _tensors(train_loader), _tensors(test_loader)
        if train[0].dim() != 4:
            raise EdgetrimError(
                f"grow builds a CNN and needs (N, C, H, W) images, got shape {tuple(train[0].shape)}"
            )
        w = parse_int_list(widths, what="--widths") or ()
        n = len(w)
        pools = set(parse_int_list(pool_after, what="--pool-after") or ())
        gated = set(parse_int_list(layer_gated, what="--layer-gated") or ())
        spec = GrowNetSpec(
            widths=w,
            pool_after=tuple(i in pools for i in range(n)),
            layer_gated=tuple(i in gated for i in range(n)),
            in_channels=int(train[0].shape[1]),
            num_classes=int(train[1].max()) + 1,
            image_size=(int(train[0].shape[2]), int(train[0].shape[3])),
        )
        cfg = GrowConfig(
            budget=BudgetKind(kind), budget_value=value, epochs=epochs, lambda1_base=lambda_base, seed=seed
        )
        tab = _load_table(table)
        meter = ResourceMeter(spec, cfg, table=tab, fusion=_fusion_for(tab) if tab is not None else None)
        net = GrowNet(
            spec,
            seed_units=cfg.seed_units,
            logit_on=cfg.logit_on,
            logit_off=cfg.logit_off,
            logit_jitter=cfg.logit_jitter,
        )
        report = grow_(net, train, cfg, val=test, meter=meter)
        final_widths = report.widths
        if kind == "latency":
            # Land on the budget on the table: scale the grown widths by one factor (keeps proportions).
            from edgetrim.compress.grow import scale_to_budget

            final_widths = scale_to_budget(
                report.widths, list(spec.widths), lambda w: meter.resource(w, report.layers_on), value
            )
        model = net.materialize(final_widths if final_widths != report.widths else None)
        accuracy = report.accuracy
        if finetune_epochs > 0 or final_widths != report.widths:
            from edgetrim.compress.grow import train_plain_
            from edgetrim.compress.grow.train import accuracy as eval_accuracy

            train_plain_(model.train(), train, epochs=max(finetune_epochs, 1), seed=seed)
            accuracy = eval_accuracy(model.eval(), test)
        example = net.example_inputs()
        predicted = _predict_ms(tab, model, example) if tab is not None else None
        full_ms = meter.full if kind == "latency" else None
        info = {
            "kind": "grow",
            "model_spec": None,
            "data_spec": data,
            "budget": report.budget,
            "predicted_ms": predicted,
            "dense_predicted_ms": full_ms,
            "accuracy": accuracy,
            "dense_accuracy": None,
            "widths_before": list(spec.widths),
            "widths_after": final_widths,
            "grown_widths": report.widths,
            "finetune_epochs": finetune_epochs,
            "config": cfg.to_dict()
            | {"spec": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.__dict__.items()}},
            "history": report.history,
            "grow": {k: v for k, v in report.to_dict().items() if k != "history"},
        }
        save_run(out, model, example, info)
        params = sum(p.numel() for p in model.parameters())
        summary = {
            "out": str(out),
            "accuracy": accuracy,
            "widths": final_widths,
            "params": params,
            "param_fraction": params / report.full_params,
            "final_resource": report.final_resource,
            "predicted_ms": predicted,
            "training_macs_ratio": report.training_macs / report.dense_training_macs,
        }
        if as_json:
            echo_json(summary)
        else:
            typer.echo(
                f"grown widths {final_widths} ({params} params, {summary['param_fraction']:.1%} of full), "
                f"accuracy {accuracy:.4f}, training MACs {summary['training_macs_ratio']:.2f}x dense -> {out}"
            )
