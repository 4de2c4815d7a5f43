"""Who is calling: the identity every component receives from the gateway.

Until authentication is configured, every call runs as the embedded default
principal (one tenant, every role, the "public" label).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TENANT = "default"
PUBLIC_LABEL = "public"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    subject: str
    roles: frozenset[str]
    # ACL labels this principal may read (and grant when writing documents).
    labels: frozenset[str]

    def can_read(self, document_labels: frozenset[str]) -> bool:
        """A document is visible when it shares at least one label with the principal."""
        return not self.labels.isdisjoint(document_labels)


EMBEDDED_PRINCIPAL = Principal(
    tenant=DEFAULT_TENANT, subject="local", roles=frozenset({"admin"}), labels=frozenset({PUBLIC_LABEL})
)
