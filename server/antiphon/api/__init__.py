"""Api layer."""
