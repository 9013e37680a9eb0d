"""Where the TUI's data comes from: the gateway's admin API (live), or a recording of it (replay).

Every method blocks: screens call them from thread workers, never on the event loop.

- `LiveSource` talks to a running gateway through `opsctl.client.AdminClient` (one keep-alive
  connection per worker thread) and opens the usage lake read-only, exactly as `opsctl sql` does.
- `RecordingSource` is a live source that also appends every answer it reads (and every live
  event) to a JSON-lines file: `opsctl tui --record FILE` captures what an operator saw, for a
  post-mortem or a bug report.
- `ReplaySource` plays such a file back (`opsctl tui --replay FILE`): the same screens over fixed
  data, read-only. The TUI's snapshot tests use it with recordings made from a real stack.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import FleetgateError

if TYPE_CHECKING:
    from analytics_lake.query import LakeQuery
    from gateway.settings import Settings
    from opsctl.client import AdminClient

# An SSE stream sends a keep-alive comment every 15 s: a read that waits longer means a dead connection.
EVENT_READ_TIMEOUT_S = 45.0
RECORDING_FORMAT = "fleetgate-tui-recording/1"


class ReadOnlySource(FleetgateError):
    """A mutating call on a source that cannot change anything (replay, --read-only)."""

    status = 403
    code = "read_only"


class RecordingError(FleetgateError):
    """A --replay file that cannot be read or is not a recording."""

    status = 400
    code = "bad_recording"


def _key(path: str, params: dict[str, Any]) -> str:
    query = "&".join(f"{k}={params[k]}" for k in sorted(params) if params[k] is not None)
    return f"{path}?{query}" if query else path


class Source:
    """What every screen reads and changes through. Subclasses implement the blocking calls."""

    #: The gateway's URL (shown in the header), or the recording's path.
    label: str = ""
    #: True when nothing can be changed through this source (a replay).
    read_only: bool = False
    #: False for a recording played back: its data is not the fleet's present state.
    live: bool = True

    def get(self, path: str, **params: Any) -> Any:
        """GET an admin API path; the decoded JSON. Raises FleetgateError (status set) or GatewayUnreachable."""
        raise NotImplementedError

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """A mutating call (POST/PATCH/PUT/DELETE); the decoded JSON answer."""
        raise NotImplementedError

    def events(self, types: tuple[str, ...] = (), on_open: Callable[[], object] | None = None,
               ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Live `(type, data)` events from `/admin/v1/events` until the stream ends (then it returns);
        `on_open` is called once subscribed."""
        raise NotImplementedError

    def lake(self) -> LakeQuery:
        """A read-only DuckDB view of the usage lake (the caller closes it)."""
        raise NotImplementedError

    def now(self) -> datetime:
        """The time the data is shown at: the wall clock live, the recording's clock in a replay."""
        return datetime.now(UTC)

    def close(self) -> None:
        """Release connections."""


class LiveSource(Source):
    """A running gateway, found and authenticated like every `opsctl` command.

    Args:
        settings: the CLI's settings (state dir, lake location, gateway URL, admin token).
        gateway: --gateway, if given.
        token: --admin-token, if given.
        timeout: seconds for each admin API call (a TUI should show a stale marker, not hang).
    """

    def __init__(self, settings: Settings, gateway: str | None = None, token: str | None = None,
                 *, timeout: float = 5.0) -> None:
        from opsctl.client import find_admin_token, find_gateway_url

        self.settings = settings
        self.url, self._url_source = find_gateway_url(settings, gateway)
        self._token = find_admin_token(settings, token, gateway_url=self.url)
        self._timeout = timeout
        self._local = threading.local()
        self._clients: list[AdminClient] = []
        self._lock = threading.Lock()
        self.label = self.url

    @property
    def admin_token(self) -> str | None:
        """The admin token, for an `opsctl` this console launches (passed by environment, never argv)."""
        return self._token

    def client(self, *, timeout: float | None = None) -> AdminClient:
        """This thread's admin client (http.client connections are not thread-safe)."""
        from opsctl.client import AdminClient

        client = getattr(self._local, "client", None)
        if client is None:
            client = AdminClient(self.url, self._token, timeout=timeout or self._timeout, source=self._url_source)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def get(self, path: str, **params: Any) -> Any:
        return self.client().request("GET", path, params=params)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        return self.client().request(method, path, json=body)

    def events(self, types: tuple[str, ...] = (), on_open: Callable[[], object] | None = None,
               ) -> Iterator[tuple[str, dict[str, Any]]]:
        from opsctl.client import AdminClient

        with AdminClient(self.url, self._token, timeout=EVENT_READ_TIMEOUT_S, source=self._url_source) as client:
            with self._lock:
                self._clients.append(client)  # close() ends the stream
            params = {"types": ",".join(types)} if types else None
            try:
                yield from client.stream_events("/admin/v1/events", params=params, on_open=on_open)
            finally:
                with self._lock:
                    if client in self._clients:  # close() may have taken it already
                        self._clients.remove(client)

    def lake(self) -> LakeQuery:
        from analytics_lake.query import LakeQuery
        from gateway.usage import lake_config

        return LakeQuery(lake_config(self.settings))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


class RecordingSource(LiveSource):
    """A live source that appends every GET answer, error and event to a recording file."""

    def __init__(self, settings: Settings, path: Path, gateway: str | None = None, token: str | None = None,
                 *, timeout: float = 5.0) -> None:
        super().__init__(settings, gateway, token, timeout=timeout)
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._write_lock = threading.Lock()
        self._start = time.monotonic()
        self._write({"format": RECORDING_FORMAT, "recorded_at": datetime.now(UTC).isoformat(), "gateway": self.url})

    def _write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), default=str)
        with self._write_lock:
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()

    def _t(self) -> float:
        return round(time.monotonic() - self._start, 3)

    def get(self, path: str, **params: Any) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        try:
            body = super().get(path, **params)
        except FleetgateError as e:
            self._write({"t": self._t(), "get": _key(path, params), "status": e.status, "error": str(e)})
            raise
        self._write({"t": self._t(), "get": _key(path, params), "status": 200, "body": body})
        return body

    def events(self, types: tuple[str, ...] = (), on_open: Callable[[], object] | None = None,
               ) -> Iterator[tuple[str, dict[str, Any]]]:
        for type_, data in super().events(types, on_open):
            self._write({"t": self._t(), "event": type_, "data": data})
            yield type_, data

    def close(self) -> None:
        super().close()
        with self._write_lock:
            self._file.close()


class ReplaySource(Source):
    """Plays a recording back: each GET of a path and query answers the recorded answers in order
    (then repeats the last); events are replayed once; the clock is the recording's. Read-only.

    Args:
        path: a file written by `opsctl tui --record`.
        settings: if given, the usage screens read this lake (a recording holds no lake).
    """

    read_only = True
    live = False

    def __init__(self, path: Path, settings: Settings | None = None) -> None:
        self.label = f"replay of {path.name}"
        self.settings = settings
        self._answers: dict[str, list[dict[str, Any]]] = {}
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._cursor: dict[str, int] = {}
        self._t = 0.0
        self._lock = threading.Lock()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise RecordingError(f"cannot read the recording {path}: {e.strerror}") from e
        try:
            entries = [json.loads(line) for line in lines if line.strip()]
        except ValueError as e:
            raise RecordingError(f"{path} is not a TUI recording (not JSON lines): {e}") from e
        if not entries or not isinstance(entries[0], dict) or entries[0].get("format") != RECORDING_FORMAT:
            raise RecordingError(f"{path} is not a TUI recording: its first line must name the format "
                                 f"{RECORDING_FORMAT!r} (make one with opsctl tui --record FILE)")
        header = entries[0]
        try:
            self._recorded_at = datetime.fromisoformat(header["recorded_at"])
        except (KeyError, TypeError, ValueError) as e:
            raise RecordingError(f"{path}: the header's recorded_at is missing or not an ISO time") from e
        self.gateway = str(header.get("gateway", ""))
        for number, entry in enumerate(entries[1:], start=2):
            if not isinstance(entry, dict) or not isinstance(entry.get("t"), (int, float)):
                raise RecordingError(f"{path}:{number}: expected an object with a time 't'")
            if "get" in entry:
                self._answers.setdefault(str(entry["get"]), []).append(entry)
            elif "event" in entry:
                self._events.append((str(entry["event"]), entry.get("data") or {}))
            else:
                raise RecordingError(f"{path}:{number}: expected a 'get' or an 'event' entry")

    def get(self, path: str, **params: Any) -> Any:
        from opsctl.client import GatewayUnreachable

        key = _key(path, params)
        with self._lock:
            answers = self._answers.get(key)
            if not answers:
                error = FleetgateError(f"the recording has no answer for GET {key}")
                error.status = 404
                raise error
            index = self._cursor.get(key, 0)
            self._cursor[key] = min(index + 1, len(answers) - 1)
            entry = answers[index]
            self._t = max(self._t, float(entry["t"]))
        if entry.get("status", 200) >= 400:
            error_cls = GatewayUnreachable if entry.get("status") == 503 else FleetgateError
            error = error_cls(str(entry.get("error", "error")))
            error.status = int(entry["status"])
            raise error
        return entry.get("body")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        raise ReadOnlySource(f"a replay is read-only: {method} {path} was not sent")

    def events(self, types: tuple[str, ...] = (), on_open: Callable[[], object] | None = None,
               ) -> Iterator[tuple[str, dict[str, Any]]]:
        if on_open is not None:
            on_open()
        for type_, data in self._events:
            if not types or type_ in types:
                yield type_, data

    def lake(self) -> LakeQuery:
        if self.settings is None:
            raise FleetgateError("a replay holds no usage lake: pass --config or FLEETGATE_LAKE_URL to read one")
        from analytics_lake.query import LakeQuery
        from gateway.usage import lake_config

        return LakeQuery(lake_config(self.settings))

    def now(self) -> datetime:
        with self._lock:
            return self._recorded_at + timedelta(seconds=self._t)
