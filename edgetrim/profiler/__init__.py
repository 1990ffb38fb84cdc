"""edgetrim.profiler."""
