"""Gateway layer."""
