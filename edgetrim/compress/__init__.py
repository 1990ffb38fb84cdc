"""edgetrim.compress."""
