"""edgetrim.profiler: measure operators and models on targets.

* :mod:`.stats` / :mod:`.timing` - robust statistics and the one timing loop (torch-free).
* :mod:`.device` - machine fingerprint, thread and CPU-affinity settings (torch-free).
* :mod:`.builders` - one-op models per runtime (ONNX and TFLite written directly, torch modules).
* :mod:`.targets` - ``get_target(name)``: torch-cpu, ort-cpu, litert-cpu, torch-cuda, ort-cuda and
  registered prefixes (``adb:SERIAL`` from :mod:`.adb`).
* :mod:`.session` - ``profile_table``: plan -> randomised, resumable measurement -> LatencyTable.
"""
