"""Deploy: export compressed models, check them, re-measure them on the target, and report.

Modules (one verb each):
    onnx_export    ``export_onnx`` (fp32, self-contained, dynamic batch), ``quantize_onnx_int8`` (static QDQ)
    tflite_export  ``export_tflite`` via litert-torch (fp32, PT2E int8 with int8 I/O) and ``TfliteRunner``
    parity         ``check_parity``: fp32 max abs error, int8 SQNR, accuracy change on real data
    remeasure      ``remeasure`` on a profiler Target, per-layer split from onnxruntime's profiler,
                   ``sparsity_payoff`` (sparse model vs its dense twin, side by side)
    manifest       manifest.json with sha256 hashes, versions, DeviceInfo, predictions, accuracy
    bundle         ``export_run``: RUN folder -> artifacts + parity + re-measurement + manifest + report
    report         ``write_report``: report.json + self-contained report.html
    demo           ``run_demo``: profile -> train -> compress to 50% -> export -> re-measure -> report

Nothing here is imported eagerly: onnx / onnxruntime and litert-torch load only when used.
"""
