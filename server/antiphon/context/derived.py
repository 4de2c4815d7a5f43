"""Access to what was derived from documents: an answer that quoted one, a summary that absorbed it.

A derived text carries one label set per source (``Acl``): a reader must be able to read every
source, each by the document rule (share at least one of its labels). A plain union of the
labels would not do: a reader holding only ``public`` would pass for an answer built from a
public document and an ``hr`` one.
"""

from __future__ import annotations

from collections.abc import Iterable

from antiphon.gateway.principal import Principal

Acl = tuple[tuple[str, ...], ...]
"""Sorted, deduplicated label sets, one per source; () = derived from nothing restricted."""

OPEN: Acl = ()


def merge(*parts: Iterable[Iterable[str]]) -> Acl:
    """The Acl of a text derived from all of ``parts`` (each an Acl or a list of label sets).

    A set that includes another is implied by it (holding one of {hr} means holding one of
    {hr, eng}) and is dropped, so the Acl stays as short as its strongest requirements."""
    sets = {frozenset(labels) for part in parts for labels in part}
    kept = [s for s in sets if not any(other < s for other in sets)]
    return tuple(sorted(tuple(sorted(s)) for s in kept))


def readable(principal: Principal, acl: Acl) -> bool:
    """May the principal see a text with this Acl (every source readable)?"""
    return all(not principal.labels.isdisjoint(labels) for labels in acl)


def from_json(value: object) -> Acl:
    """An Acl from its stored form (a list of lists of labels); anything else is a corrupt record."""
    if not isinstance(value, list) or not all(
        isinstance(s, list) and s and all(isinstance(x, str) for x in s) for s in value
    ):
        raise ValueError(f"acl: expected a list of label lists, got {value!r:.80}")
    return merge(value)
