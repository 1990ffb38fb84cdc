"""edgetrim.examples."""
