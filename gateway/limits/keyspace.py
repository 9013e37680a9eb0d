"""Every Redis key name the limiters use, in one place.

All keys of one org carry the hash tag `{org_id}`, so one Lua script only ever touches one
Redis Cluster slot. LocalLimiter uses the same names as dictionary keys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key names under `prefix` (default "fg").

    Layout:
        {p}:{org}:rl:{scope}:{id}:rpm|tpm          GCRA theoretical arrival time (ms), PX until idle
        {p}:{org}:budget:{scope}:{id}:{period}:{suffix}         HASH spent, reserved (micro-USD); since, lake,
                                                   base: its part from the usage lake (restore.py)
        {p}:{org}:budget:{scope}:{id}:{period}:{suffix}:leases  ZSET "{rid}:{micros}" -> lease expiry (ms)
        {p}:{org}:res:{rid}                        open-reservation marker (settle idempotency)
        {p}:{org}:recon:{batch}                    applied-batch marker (reconcile idempotency)
    """

    prefix: str = "fg"

    def rate(self, org_id: str, scope: str, scope_id: str, kind: str) -> str:
        return f"{self.prefix}:{{{org_id}}}:rl:{scope}:{scope_id}:{kind}"

    def budget(self, org_id: str, scope: str, scope_id: str, period: str, suffix: str) -> tuple[str, str]:
        """(hash key, lease zset key) of one budget period."""
        base = f"{self.prefix}:{{{org_id}}}:budget:{scope}:{scope_id}:{period}:{suffix}"
        return base, base + ":leases"

    def marker(self, org_id: str, reservation_id: str) -> str:
        return f"{self.prefix}:{{{org_id}}}:res:{reservation_id}"

    def reconcile_marker(self, org_id: str, batch_id: str) -> str:
        return f"{self.prefix}:{{{org_id}}}:recon:{batch_id}"
