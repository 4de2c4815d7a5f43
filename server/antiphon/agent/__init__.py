"""Agent layer."""
