"""Who is calling the admin API: a `Principal` with a role and an org scope.

Roles are ordered viewer < operator < admin. A principal with `org_id` None is global (it may act
on every org); otherwise it acts only on its own org's objects. `gateway.admin.access` holds the
table of what each admin route requires.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
# How a principal authenticated; the audit log records it as the actor's type.
PRINCIPAL_KINDS = ("bootstrap", "user", "service_account", "api_key")


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # one of PRINCIPAL_KINDS
    id: str  # user / service account / key id; "bootstrap" for the bootstrap token
    name: str
    role: str  # one of ROLES
    org_id: str | None = None  # None: global
    token_id: str | None = None  # the personal token or JWT id used, when there is one

    @property
    def is_global(self) -> bool:
        return self.org_id is None

    @property
    def actor(self) -> str:
        """The audit log's actor: `bootstrap`, `user:alice`, `service_account:ci`, `api_key:key_…`."""
        return "bootstrap" if self.kind == "bootstrap" else f"{self.kind}:{self.name}"

    def has_role(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def may_act_on_org(self, org_id: str | None) -> bool:
        """Global principals act on every org; org principals on their own org's objects only."""
        return self.org_id is None or (org_id is not None and org_id == self.org_id)

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "id": self.id, "name": self.name, "role": self.role, "org_id": self.org_id,
                "actor": self.actor}


BOOTSTRAP = Principal(kind="bootstrap", id="bootstrap", name="bootstrap", role="admin")


def check_role(value: str, param: str = "role") -> str:
    from gateway.errors import InvalidRequest

    if value not in ROLE_RANK:
        raise InvalidRequest(f"'{param}' must be one of {', '.join(ROLES)}.", param=param)
    return value
