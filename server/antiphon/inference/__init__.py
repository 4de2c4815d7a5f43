"""Model backends per capability."""
