"""What every settings section shares: the error type and the check that names the field."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the field."""


def require(cond: bool, name: str, why: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {why}")
