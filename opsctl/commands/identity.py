"""`opsctl user …`, `opsctl service-account …`, `opsctl login`, `opsctl whoami` (being written for issue 12)."""

from __future__ import annotations

from opsctl.common import new_app

user_app = new_app("Users: people with a role (viewer < operator < admin), global or in one org.")
service_account_app = new_app("Service accounts: OAuth2 client-credentials clients for CI and automation.")
