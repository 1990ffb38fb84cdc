"""edgetrim.deploy."""
