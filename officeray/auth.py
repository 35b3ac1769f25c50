"""Identities: API keys, their tenants and roles, and what each role may do.

A key is bound to one tenant and one :class:`Role`. The gateway turns ``Authorization: Bearer KEY``
into a :class:`Principal`; everything a route may do is decided by the pure functions here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    USER = "user"
    """Submits and reads its tenant's tasks."""
    APPROVER = "approver"
    """A user who also decides its tenant's approvals and reviews."""
    ADMIN = "admin"
    """Everything, every tenant: DLQ retries, key management."""


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: the authenticated key's id, its tenant and its role."""

    key_id: str
    tenant: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def sees_tenant(self, tenant: str) -> bool:
        """Whether this principal may see ``tenant``'s tasks (its own; an admin: every tenant)."""
        return self.is_admin or tenant == self.tenant
