"""The admin API client used by opsctl and the TUI: stdlib `http.client`, one keep-alive connection.

Stdlib on purpose: every admin command pays for the client's import, and httpx alone cost
~60 ms of the 0.3 s start-up budget (http.client itself loads on the first request: `--help`
does not pay for it). Errors come back as `FleetgateError` carrying the
server's status and message, so the CLI maps them to exit codes (4xx → 2, 5xx and unreachable → 1).
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

from gateway.errors import FleetgateError
from opsctl.state import ADMIN_TOKEN_FILE, GATEWAY_URL_FILE, read_value, recorded_gateway_url

if TYPE_CHECKING:
    import http.client

    from gateway.settings import Settings

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
DOWNLOAD_CHUNK_BYTES = 64 * 1024


class GatewayUnreachable(FleetgateError):
    status = 503
    code = "gateway_unreachable"


def _error(status: int, reason: str, data: bytes) -> FleetgateError:
    """The gateway's refusal as an error carrying its HTTP status and its message."""
    try:
        message = jsonlib.loads(data)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = data[:200].decode(errors="replace").strip() or f"{status} {reason}"
    error = FleetgateError(message)
    error.status = status
    return error


class LoginExpired(FleetgateError):
    status = 401
    code = "login_expired"


def find_admin_token(settings: Settings, explicit: str | None = None, *, gateway_url: str | None = None) -> str | None:
    """--admin-token, then FLEETGATE_ADMIN_TOKEN (in settings), then the token `opsctl login` stored for
    this gateway (`gateway_url`, default: the one the settings name), then the one `opsctl up` saved.

    Raises:
        LoginExpired: the stored login has expired (a clear error, not a silent fall-back to another identity).
    """
    if explicit or settings.admin_token:
        return explicit or settings.admin_token
    from opsctl.credentials import stored_login

    url = gateway_url or find_gateway_url(settings)[0]
    login = stored_login(url)
    if login is not None:
        if login.expired():
            raise LoginExpired(f"the login for {url} expired at {login.expires_at}: run opsctl login")
        return login.token
    return read_value(Path(settings.state_dir) / ADMIN_TOKEN_FILE)


def find_gateway_url(settings: Settings, explicit: str | None = None) -> tuple[str, str]:
    """Where the gateway is, and where that came from (a phrase for error messages):
    --gateway, then FLEETGATE_GATEWAY_URL (or the TOML file), then the URL the `opsctl up`
    of this state dir recorded, then http://127.0.0.1:8080."""
    if explicit:
        return explicit, "URL from --gateway"
    if settings.gateway_url:
        return settings.gateway_url, "URL from the gateway_url setting (FLEETGATE_GATEWAY_URL)"
    recorded = recorded_gateway_url(Path(settings.state_dir))
    if recorded:
        path = Path(settings.state_dir) / GATEWAY_URL_FILE
        return recorded, f"URL from {path}, written by opsctl up: is it still running?"
    return DEFAULT_GATEWAY_URL, "the default URL: start one with opsctl up, or pass --gateway"


def path_part(value: str) -> str:
    """One URL path segment from user input (a name with '/' or '?' must not change the route)."""
    return quote(value, safe="")


class AdminClient:
    """Calls `/admin/v1/...` with a bearer token; JSON in, JSON out.

    Args:
        base_url: http(s)://host[:port] of the gateway.
        token: the admin bearer token (None sends no Authorization header).
        timeout: seconds for connecting and for each read.
        source: where base_url came from (a phrase), quoted when the gateway cannot be reached.
    """

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0, source: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FleetgateError(f"gateway URL {base_url!r} is invalid: expected http(s)://HOST[:PORT]")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._source = source
        self._headers = {"Accept": "application/json", "User-Agent": "opsctl"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._stream: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Close the connection; an event stream read in another thread ends (GatewayUnreachable there)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        stream = self._stream
        if stream is not None and stream.sock is not None:
            import socket

            try:
                stream.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading the stream
            except OSError:
                pass  # already closed by the server

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _send(self, method: str, target: str, body: bytes | None,
              extra_headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        import http.client

        # A keep-alive connection the server closed between two requests fails like this before
        # any byte of the answer; such a request never reached the handler: sending it again is safe.
        stale_connection = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        headers.update(extra_headers or {})
        for attempt in (1, 2):
            reused = self._conn is not None and self._conn.sock is not None
            conn = self._connection()
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except stale_connection as e:
                self.close()
                if reused and attempt == 1:
                    continue
                raise self._unreachable(e) from e
            except (OSError, http.client.HTTPException) as e:  # refused, timeout, DNS, TLS, garbled reply
                self.close()
                raise self._unreachable(e) from e
            if response.will_close:
                self.close()
            return response.status, response.reason, data
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _unreachable(self, error: BaseException) -> GatewayUnreachable:
        why = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
        source = f"; {self._source}" if self._source else ""
        return GatewayUnreachable(f"cannot reach the gateway at {self.base_url} ({why}{source})")

    def set_header(self, name: str, value: str) -> None:
        """Send `name: value` with every later request (e.g. X-Fleetgate-Change-Source)."""
        self._headers[name] = value

    def download(self, path: str, params: dict[str, Any], sink: BinaryIO) -> int:
        """Copy a streamed answer (an export) into `sink` as it arrives; return the bytes copied.

        `request` reads a whole answer into memory; an export can be large, so this reads it in chunks.

        Raises:
            GatewayUnreachable: no connection, or the answer broke off part-way (exit 1).
            FleetgateError: the gateway refused (`status` set: 4xx exit 2).
        """
        import http.client

        query = urlencode({k: v for k, v in params.items() if v is not None})
        conn = self._connection()
        try:
            try:
                conn.request("GET", f"{self._prefix}{path}?{query}", headers=self._headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e) from e
            if response.status >= 400:
                raise _error(response.status, response.reason, response.read())
            copied = 0
            while chunk := self._read_chunk(response, copied):
                sink.write(chunk)
                copied += len(chunk)
            return copied
        finally:
            self.close()  # a half-read answer leaves the connection unusable

    def _read_chunk(self, response: Any, copied: int) -> bytes:
        import http.client

        try:
            return response.read(DOWNLOAD_CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as e:
            raise GatewayUnreachable(f"the download from {self.base_url} broke off after {copied} bytes "
                                     f"({type(e).__name__}): run it again") from e

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON answer.

        Raises:
            GatewayUnreachable: no connection, or the connection broke.
            FleetgateError: the gateway answered >= 400 (`status` is its HTTP status) or not JSON.
        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        body = jsonlib.dumps(json).encode() if json is not None else None
        status, reason, data = self._send(method, target, body)
        if status >= 400:
            raise _error(status, reason, data)
        try:
            return jsonlib.loads(data) if data else None
        except ValueError as e:
            error = FleetgateError(f"the gateway at {self.base_url} answered {method} {path} with non-JSON")
            error.status = 502
            raise error from e

    def oauth_token(self, client_id: str, client_secret: str) -> dict[str, Any]:
        """An access token from `POST /oauth2/token` (client-credentials grant, HTTP Basic client auth).

        Raises:
            GatewayUnreachable: no connection.
            FleetgateError: the RFC 6749 error (`status` 400/401) with its description.
        """
        from base64 import b64encode
        from urllib.parse import quote_plus

        basic = b64encode(f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()).decode()
        status, reason, data = self._send("POST", self._prefix + "/oauth2/token", b"grant_type=client_credentials", {
            "Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})
        try:
            answer = jsonlib.loads(data)
        except ValueError:
            answer = None
        if status >= 400 or not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            problem = answer.get("error") if isinstance(answer, dict) else None
            if isinstance(problem, dict):  # the gateway's own errors (e.g. 413) are OpenAI-shaped
                problem = problem.get("message")
            elif isinstance(problem, str):  # RFC 6749 §5.2
                problem = answer.get("error_description") or problem
            message = problem if isinstance(problem, str) and problem else (
                f"the gateway at {self.base_url} answered POST /oauth2/token with {status} {reason}")
            error = FleetgateError(message)
            error.status = status if status >= 400 else 502
            raise error
        return answer

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

    def stream_events(self, path: str, *, params: dict[str, Any] | None = None,
                      on_open: Callable[[], object] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-Sent Events from `path` as `(event type, decoded data)` until the server ends the stream.

        `on_open` is called once the gateway accepted the subscription (before any event).

        Uses its own connection (a stream holds it); the client's timeout bounds each read, so it
        should exceed the server's keep-alive interval (15 s).

        Raises:
            GatewayUnreachable: no connection, or the connection broke or went silent.
            FleetgateError: the gateway refused the stream (`status` set).
        """
        import http.client

        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = self._prefix + path + (f"?{urlencode(query)}" if query else "")
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self._timeout)
        self._stream = conn
        headers = {**self._headers, "Accept": "text/event-stream"}
        try:
            try:
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e) from e
            if response.status >= 400:
                data = response.read()
                try:
                    message = jsonlib.loads(data)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = f"{response.status} {response.reason}"
                error = FleetgateError(message)
                error.status = response.status
                raise error
            if on_open is not None:
                on_open()
            event, data_lines = "message", []
            while True:
                try:
                    raw = response.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise self._unreachable(e) from e
                if not raw:
                    return  # the server ended the stream
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if not line:
                    if data_lines:
                        try:
                            payload = jsonlib.loads("\n".join(data_lines))
                        except ValueError:
                            payload = {"text": "\n".join(data_lines)}
                        yield event, payload if isinstance(payload, dict) else {"value": payload}
                    event, data_lines = "message", []
                elif line.startswith(":"):
                    continue  # a comment: keep-alive or the subscription notice
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data_lines.append(line[5:].removeprefix(" "))
        finally:
            self._stream = None
            conn.close()

    def get_status(self, path: str) -> int:
        """HTTP status of a GET without raising on >= 400 (readiness probes)."""
        return self._send("GET", self._prefix + path, None)[0]
