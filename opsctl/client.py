"""The admin API client used by opsctl and the TUI (sync httpx; one request per command).

Errors come back as `gateway.errors.FleetgateError` carrying the server's status and
message, so the CLI maps them to exit codes (4xx → 2, 5xx and unreachable → 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from gateway.errors import FleetgateError
from gateway.settings import Settings

ADMIN_TOKEN_FILE = "admin_token"


class GatewayUnreachable(FleetgateError):
    status = 503
    code = "gateway_unreachable"


def find_admin_token(settings: Settings, explicit: str | None = None) -> str | None:
    """--admin-token, then FLEETGATE_ADMIN_TOKEN (in settings), then the one `opsctl up` saved."""
    if explicit:
        return explicit
    if settings.admin_token:
        return settings.admin_token
    path = Path(settings.state_dir) / ADMIN_TOKEN_FILE
    if path.is_file():
        return path.read_text().strip() or None
    return None


class AdminClient:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=json,
                                          params={k: v for k, v in (params or {}).items() if v is not None})
        except httpx.TransportError as e:
            raise GatewayUnreachable(f"cannot reach the gateway at {self.base_url} ({type(e).__name__})") from e
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200] or response.reason_phrase
            error = FleetgateError(message)
            error.status = response.status_code
            raise error
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {})

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
