"""Context layer."""
