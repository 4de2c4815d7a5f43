"""Telemetry layer."""
