"""edgetrim.lookup_tables."""
