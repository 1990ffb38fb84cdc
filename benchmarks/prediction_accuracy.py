"""Whole-model latency prediction accuracy: per-op tables vs a FLOPs-proportional baseline.

For each target (ort-cpu and litert-cpu by default, 1 thread) this script

1. builds every model of the suite (MLPs, LeNets, ResNet-like, MobileNetV3-/EfficientNet-like CNNs
   at several widths, some pruned to odd widths, and BERT-style encoder blocks) from
   ``edgetrim.examples.models`` and extracts its ops with the target's fusion rules;
2. profiles one table covering every context the suite uses, each up to the widest layer, with the
   planner's grid plus refinement and spike re-measurement. The models' own layer widths are *not*
   added to the plan (unless ``--include-exact``), so odd widths are genuinely interpolated; the
   build time is recorded. Models include 32x32-input CNNs, where compute rather than the per-invoke
   overhead dominates;
3. measures every model on the target, interleaved: ``--rounds`` rounds, each timing every model once
   in a shuffled order; a model's latency is the median of its round medians (spread: min..max of
   the round medians);
4. predicts every model from the table (``predict_model``: per-op costs, the per-node dispatch
   cost and, on onnxruntime, NCHWc layout reorders and blocked-conv fusions, all measured by the
   profiler, nothing fitted on these models), for comparison with the dispatch cost instead fitted
   leave-one-out on the other models (``fit_per_op_overhead``), and with the FLOPs baseline
   (``ms_per_mac x MACs``, ``ms_per_mac`` fitted leave-one-out likewise);
5. writes JSON: per model rows, share within +-10%, MAPE, Spearman for both predictors, build time;
   ``table_prediction_vs_min_round`` scores the same predictions against each model's fastest round
   (a second view for a shared machine, where other processes' load only adds time).

``--suite transformers`` runs the same protocol on models edgetrim's own zoo does not contain:
Hugging Face transformers' ResNet (basic and bottleneck blocks), MobileNetV2 (TensorFlow-style same
padding), EfficientNet, ConvNeXt, ViT, BERT (token ids) and MobileViT, each built from a small config
with random weights (nothing is downloaded) and used through its logits.

Usage::

    .venv/bin/python benchmarks/prediction_accuracy.py            # full run (tens of minutes)
    .venv/bin/python benchmarks/prediction_accuracy.py --quick    # reduced run (smoke, minutes)
    .venv/bin/python benchmarks/prediction_accuracy.py --suite transformers --targets ort-cpu

Output: ``benchmarks/results/prediction_accuracy.json`` (``--out`` to change; ``--quick`` writes
``prediction_accuracy_quick.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgetrim.examples.models import build  # noqa: E402
from edgetrim.io_utils import atomic_write_json  # noqa: E402
from edgetrim.lookup_tables import predict_model  # noqa: E402
from edgetrim.lookup_tables.metrics import summary  # noqa: E402
from edgetrim.lookup_tables.predict import fit_ms_per_mac, fit_per_op_overhead, total_macs  # noqa: E402
from edgetrim.model_ops import extract_layer_ops  # noqa: E402
from edgetrim.profiler.session import ContextPlan, ProfileConfig, plan_from_layer_ops, profile_table  # noqa: E402
from edgetrim.profiler.targets import get_target  # noqa: E402
from edgetrim.profiler.timing import TimingConfig  # noqa: E402

logger = logging.getLogger("prediction_accuracy")

# (label, zoo name, keyword arguments). Odd widths are what a pruner leaves behind.
SUITE: list[tuple[str, str, dict[str, Any]]] = [
    ("mlp_128_64", "mlp", {"widths": (128, 64)}),
    ("mlp_61_37", "mlp", {"widths": (61, 37)}),
    ("mlp_256_128", "mlp", {"widths": (256, 128)}),
    ("mlp_197_93_45", "mlp", {"widths": (197, 93, 45)}),
    ("mlp_bn_128", "mlp_bn", {"hidden": 128}),
    ("mlp_bn_77", "mlp_bn", {"hidden": 77}),
    ("lenet_300_100", "lenet_300_100", {}),
    ("lenet_300_100_pruned", "lenet_300_100", {"widths": (213, 71)}),
    ("lenet5", "lenet5", {"image_size": 16}),
    ("digits_cnn", "digits_cnn", {"image_size": 16}),
    ("digits_cnn_pruned", "digits_cnn", {"widths": (23, 45, 51), "image_size": 16}),
    ("cnn3", "cnn3", {"image_size": 16}),
    ("cnn3_pruned", "cnn3", {"widths": (13, 29, 27), "image_size": 16}),
    ("resnet_16_32_64", "resnet_small", {"widths": (16, 32, 64), "image_size": 16}),
    ("resnet_16_37_61", "resnet_small", {"widths": (16, 37, 61), "image_size": 16}),
    ("resnet_24_48_96", "resnet_small", {"widths": (24, 48, 96), "image_size": 16}),
    ("resnet_11_27_53", "resnet_small", {"widths": (11, 27, 53), "image_size": 16}),
    ("mobilenetv3_1.0", "mobilenetv3_small", {"image_size": 16}),
    ("mobilenetv3_0.75", "mobilenetv3_small", {"width_mult": 0.75, "image_size": 16}),
    ("mobilenetv3_0.77_odd", "mobilenetv3_small", {"width_mult": 0.77, "divisor": 1, "image_size": 16}),
    ("mobilenetv3_0.61_odd", "mobilenetv3_small", {"width_mult": 0.61, "divisor": 1, "image_size": 16}),
    ("efficientnet_b0_0.5", "efficientnet_b0_small", {"width_mult": 0.5, "image_size": 16}),
    (
        "efficientnet_b0_0.43_odd",
        "efficientnet_b0_small",
        {"width_mult": 0.43, "divisor": 1, "image_size": 16},
    ),
    # realistic sizes: 32x32 inputs, where compute rather than per-invoke overhead dominates
    ("cnn3_pruned_32px", "cnn3", {"widths": (13, 29, 27), "image_size": 32}),
    ("resnet_16_32_64_32px", "resnet_small", {"widths": (16, 32, 64), "image_size": 32}),
    ("resnet_11_27_53_32px", "resnet_small", {"widths": (11, 27, 53), "image_size": 32}),
    ("mobilenetv3_1.0_32px", "mobilenetv3_small", {"image_size": 32}),
    ("mobilenetv3_0.61_odd_32px", "mobilenetv3_small", {"width_mult": 0.61, "divisor": 1, "image_size": 32}),
    ("bert_64", "bert_encoder_small", {}),
    ("bert_48_ffn_93", "bert_encoder_small", {"hidden": 48, "num_heads": 4, "ffn": 93}),
]

QUICK_SUITE = [
    "mlp_128_64",
    "mlp_61_37",
    "mlp_bn_77",
    "lenet_300_100_pruned",
    "digits_cnn",
    "digits_cnn_pruned",
    "cnn3_pruned",
    "resnet_16_32_64",
    "resnet_16_37_61",
    "mobilenetv3_0.75",
    "mobilenetv3_0.77_odd",
    "bert_48_ffn_93",
    "resnet_16_32_64_32px",
    "mobilenetv3_0.61_odd_32px",
]


# (label, "hf_<family>", config keyword arguments): models of another zoo, see ``_build_transformers``.
TRANSFORMERS_SUITE: list[tuple[str, str, dict[str, Any]]] = [
    ("hf_resnet_basic_32px", "hf_resnet", {"embedding_size": 32, "hidden_sizes": [32, 64, 128, 256]}),
    ("hf_resnet_bottleneck_32px", "hf_resnet",
     {"embedding_size": 32, "hidden_sizes": [64, 128, 256, 512], "layer_type": "bottleneck"}),
    ("hf_mobilenetv2_0.5_32px", "hf_mobilenetv2", {"depth_multiplier": 0.5}),
    ("hf_mobilenetv2_0.75_32px", "hf_mobilenetv2", {"depth_multiplier": 0.75}),
    ("hf_efficientnet_0.5_32px", "hf_efficientnet",
     {"width_coefficient": 0.5, "depth_coefficient": 0.5, "hidden_dim": 640}),
    ("hf_convnext_16_32px", "hf_convnext", {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 2, 1]}),
    ("hf_convnext_24_32px", "hf_convnext", {"hidden_sizes": [24, 48, 96, 192], "depths": [1, 1, 2, 1]}),
    ("hf_vit_64_32px", "hf_vit", {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}),
    ("hf_vit_96_3heads_32px", "hf_vit", {"hidden_size": 96, "num_attention_heads": 3, "intermediate_size": 200}),
    ("hf_bert_64_seq64", "hf_bert", {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}),
    ("hf_bert_128_seq32", "hf_bert",
     {"hidden_size": 128, "num_attention_heads": 8, "intermediate_size": 256, "seq": 32}),
    ("hf_mobilevit_32px", "hf_mobilevit",
     {"hidden_sizes": [48, 64, 80], "neck_hidden_sizes": [16, 24, 32, 48, 64, 80, 160]}),
]  # fmt: skip


def _build_transformers(family: str, **cfg: Any) -> tuple[Any, tuple[Any, ...]]:
    """A transformers model from a small config (random weights, seeded), through its logits."""
    import torch
    import transformers as tf

    from edgetrim.model_spec import LogitsOutput

    torch.manual_seed(0)
    image = torch.randn(1, 3, 32, 32)
    if family == "hf_resnet":
        model = tf.ResNetForImageClassification(tf.ResNetConfig(depths=[1, 1, 1, 1], **cfg))
    elif family == "hf_mobilenetv2":
        model = tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(image_size=32, **cfg))
    elif family == "hf_efficientnet":
        model = tf.EfficientNetForImageClassification(tf.EfficientNetConfig(image_size=32, **cfg))
    elif family == "hf_convnext":
        model = tf.ConvNextForImageClassification(tf.ConvNextConfig(**cfg))
    elif family == "hf_vit":
        config = tf.ViTConfig(image_size=32, patch_size=4, num_hidden_layers=2, **cfg)
        model = tf.ViTForImageClassification(config)
    elif family == "hf_bert":
        seq = cfg.pop("seq", 64)
        config = tf.BertConfig(vocab_size=1000, num_hidden_layers=2, max_position_embeddings=seq, **cfg)
        model = tf.BertForSequenceClassification(config)
        return LogitsOutput(model).eval(), (torch.randint(0, 1000, (1, seq)),)
    elif family == "hf_mobilevit":
        model = tf.MobileViTForImageClassification(tf.MobileViTConfig(image_size=32, **cfg))
    else:
        raise ValueError(f"unknown transformers family {family!r}")
    return LogitsOutput(model).eval(), (image,)


def _build(name: str, kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    if name.startswith("hf_"):
        return _build_transformers(name, **kwargs)
    return build(name, **kwargs)


@contextlib.contextmanager
def _quiet_stdout():  # type: ignore[no-untyped-def]
    """Converters print progress on stdout; keep it on stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _leave_one_out_baseline(macs: list[int], measured: list[float]) -> list[float]:
    out = []
    for k in range(len(macs)):
        others_m = [m for j, m in enumerate(macs) if j != k]
        others_t = [t for j, t in enumerate(measured) if j != k]
        out.append(fit_ms_per_mac(others_m, others_t) * macs[k])
    return out


def _convert(target_name: str, module: Any, inputs: Any, stem: Path) -> Path | None:
    """The artifact ``measure_model`` would build (ONNX / TFLite), built once; None: convert per call."""
    with _quiet_stdout():
        if target_name.startswith("ort-"):
            from edgetrim.profiler.targets.onnxruntime_target import export_onnx_for_timing

            path = stem.parent / f"{stem.name}.onnx"  # not with_suffix: labels contain dots
            export_onnx_for_timing(module, tuple(inputs), path)
            return path
        if target_name == "litert-cpu":
            from edgetrim.profiler.targets.litert_target import convert_tflite_for_timing

            path = stem.parent / f"{stem.name}.tflite"
            convert_tflite_for_timing(module, tuple(inputs), path)
            return path
    return None


def run_target(
    target_name: str,
    suite: list[tuple[str, str, dict[str, Any]]],
    *,
    quick: bool,
    rounds: int,
    include_exact: bool,
    table_dir: Path,
    seed: int,
    passes: int = 1,
) -> dict[str, Any]:
    target = get_target(target_name, threads=1)
    info = target.info()
    models = []
    for label, name, kwargs in suite:
        module, inputs = _build(name, dict(kwargs))
        ops = extract_layer_ops(module, inputs, fusion=target.fusion)
        models.append({"label": label, "module": module, "inputs": inputs, "ops": ops})
    # Convert each model once with the target's own conversion path (before the long table build, so
    # a model its converter cannot take is known at once); such a model is reported and left out.
    artifact_dir = table_dir / f"{target_name}_models"
    artifact_dir.mkdir(parents=True, exist_ok=True)
    not_converted: dict[str, str] = {}
    for m in models:
        try:
            m["artifact"] = _convert(target_name, m["module"], m["inputs"], artifact_dir / m["label"])
        except Exception as exc:  # the converter's own limits (e.g. litert-torch on 4-D batch matmuls)
            not_converted[m["label"]] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            logger.warning(
                "%s: %s cannot be converted: %s", target_name, m["label"], not_converted[m["label"]]
            )
    models = [m for m in models if m["label"] not in not_converted]
    all_ops = [op for m in models for op in m["ops"]]
    plans = plan_from_layer_ops(all_ops)
    if not include_exact:
        plans = [ContextPlan(p.context, p.max_in, p.max_out) for p in plans]
    # Full run: per point at least 7 samples of >= 0.1 ms, at most 0.15 s (a shared 2-core machine
    # cannot afford TimingConfig()'s 0.5 s cap over ~15k points); spikes are re-measured anyway.
    timing = (
        TimingConfig.quick()
        if quick
        else TimingConfig(warmup=3, min_runs=7, max_runs=80, rel_ci=0.03, time_cap_s=0.15, min_sample_ms=0.1)
    )
    cfg = ProfileConfig(
        seed=seed,
        points_per_context=400 if quick else 600,
        refine_rounds=1 if quick else 2,
        passes=passes,
    )
    table_path = table_dir / f"{target_name}.json"
    table_path.unlink(missing_ok=True)
    logger.info("%s: %d models, %d contexts", target_name, len(models), len(plans))
    t0 = time.perf_counter()
    with _quiet_stdout():
        table = profile_table(target, plans, out=table_path, timing=timing, refine=True, config=cfg)
    build_s = time.perf_counter() - t0

    # Interleaved whole-model measurement: every round times every model once, in a new order.
    model_timing = TimingConfig.quick() if quick else TimingConfig(time_cap_s=1.0)
    per_round: dict[str, list[float]] = {m["label"]: [] for m in models}
    rng = random.Random(seed)
    t1 = time.perf_counter()
    for r in range(rounds):
        order = list(range(len(models)))
        rng.shuffle(order)
        for k in order:
            m = models[k]
            with _quiet_stdout():
                if m["artifact"] is not None:
                    stats = target.measure_artifact(m["artifact"], model_timing)
                else:
                    stats = target.measure_model(m["module"], m["inputs"], model_timing)
            per_round[m["label"]].append(stats.median_ms)
        logger.info("%s: measurement round %d/%d done", target_name, r + 1, rounds)
    measure_s = time.perf_counter() - t1

    rows = []
    preds = []
    for m in models:
        pred = predict_model(table, m["ops"])
        preds.append(pred)
        meas = per_round[m["label"]]
        rows.append(
            {
                "model": m["label"],
                "measured_ms": statistics.median(meas),
                "measured_round_min_ms": min(meas),
                "measured_round_max_ms": max(meas),
                "predicted_ms": pred.total_ms,
                "uncovered_share": pred.uncovered_share,
                "extrapolated_share": pred.extrapolated_share,
                "dispatch_ms": pred.dispatch_ms,
                "layout_ms": sum(r.ms for r in pred.rows if r.method == "layout"),
                "fused_rows": sum(1 for r in pred.rows if r.method == "fused"),
                "n_ops": len(m["ops"]),
                "macs": total_macs(m["ops"]),
            }
        )
    measured = [r["measured_ms"] for r in rows]
    baseline = _leave_one_out_baseline([r["macs"] for r in rows], measured)
    # Table + per-op dispatch cost fitted on the *other* models (leave-one-out), replacing the
    # measured one: a comparison, not the table's prediction.
    calibrated = []
    for k, pred in enumerate(preds):
        c = fit_per_op_overhead(
            [p for j, p in enumerate(preds) if j != k], [t for j, t in enumerate(measured) if j != k]
        )
        nodes = sum(1 for r in pred.rows if r.method != "fused")
        calibrated.append(pred.total_ms - pred.dispatch_ms + c * max(nodes - 1, 0))
    per_op_all = fit_per_op_overhead(preds, measured)
    for r, b, cal in zip(rows, baseline, calibrated, strict=True):
        r["flops_baseline_ms"] = b
        r["calibrated_ms"] = cal
        r["rel_err"] = (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"]
        r["calibrated_rel_err"] = (cal - r["measured_ms"]) / r["measured_ms"]
        r["flops_rel_err"] = (b - r["measured_ms"]) / r["measured_ms"]
    return {
        "target": target_name,
        "fingerprint": info.fingerprint(),
        "device": info.to_dict(),
        "table": {
            "path": str(table_path),
            "contexts": len(table.contexts()),
            "points": table.n_points(),
            "build_time_s": build_s,
            "passes": passes,
            "invoke_overhead_ms": table.meta.get("invoke_overhead_ms"),
            "per_op_overhead_ms": table.meta.get("per_op_overhead_ms"),
            "ort_nchwc_block": table.meta.get("ort_nchwc_block"),
            "skipped_contexts": table.meta.get("skipped_contexts", {}),
        },
        "measure_time_s": measure_s,
        "not_converted": not_converted,
        "per_op_overhead_ms_fitted_all_models": per_op_all,
        "table_prediction": summary([r["predicted_ms"] for r in rows], measured),
        # the same against each model's least-disturbed round (the machine is shared: load from
        # other processes only adds time); a second view, not the headline
        "table_prediction_vs_min_round": summary(
            [r["predicted_ms"] for r in rows], [r["measured_round_min_ms"] for r in rows]
        ),
        "table_prediction_dispatch_loo": summary(calibrated, measured),
        "flops_baseline": summary(baseline, measured),
        "models": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced suite, coarse timing, small grids")
    parser.add_argument(
        "--suite", choices=("zoo", "transformers"), default="zoo",
        help="edgetrim's example models, or transformers' models built from small configs",
    )  # fmt: skip
    parser.add_argument("--targets", default="ort-cpu,litert-cpu", help="comma-separated target names")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved measurement rounds")
    parser.add_argument("--include-exact", action="store_true", help="also profile the models' exact widths")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--passes",
        type=int,
        default=None,
        help="table passes per point, lowest kept (default 2; 1 with --quick)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where tables and model files go (temp dir)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)

    if args.suite == "transformers":
        suite = TRANSFORMERS_SUITE[::3] if args.quick else TRANSFORMERS_SUITE
    else:
        suite = [s for s in SUITE if s[0] in QUICK_SUITE] if args.quick else SUITE
    rounds = args.rounds or (3 if args.quick else 5)
    name = "prediction_accuracy" + ("_transformers" if args.suite == "transformers" else "")
    name += "_quick" if args.quick else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"{name}.json"
    table_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="edgetrim-prediction-accuracy-"))
    table_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "prediction_accuracy",
        "quick": args.quick,
        "suite": args.suite,
        "include_exact": args.include_exact,
        "rounds": rounds,
        "git_sha": _git_sha(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "n_models": len(suite),
        "work_dir": str(table_dir),
        "targets": [],
    }
    for target_name in [t.strip() for t in args.targets.split(",") if t.strip()]:
        res = run_target(
            target_name,
            suite,
            quick=args.quick,
            passes=args.passes or (1 if args.quick else 2),
            rounds=rounds,
            include_exact=args.include_exact,
            table_dir=table_dir,
            seed=args.seed,
        )
        results["targets"].append(res)
        atomic_write_json(out, results)
        for label, key in (
            ("table", "table_prediction"),
            ("table+dispatch(loo)", "table_prediction_dispatch_loo"),
            ("FLOPs(loo)", "flops_baseline"),
        ):
            m = res[key]
            print(
                f"{target_name} {label:<20} within10 {m['within_10pct']:.2f}  MAPE {m['mape_pct']:.1f}%  "
                f"spearman {m['spearman']:.3f}",
                file=sys.stderr,
            )
        print(f"{target_name} table build {res['table']['build_time_s']:.0f} s", file=sys.stderr)
    atomic_write_json(out, results)
    print(json.dumps({"out": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
