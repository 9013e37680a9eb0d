"""`opsctl audit list|export` (being written for issue 12)."""

from __future__ import annotations

from opsctl.common import new_app

audit_app = new_app("The audit log: every admin change, who made it, before and after.")
