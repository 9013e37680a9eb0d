"""What every live screen shares: a refresh loop in a thread worker, a freshness line, guarded actions.

A screen implements `fetch()` (blocking, runs in a worker thread, returns plain data) and
`show(data)` (on the event loop, updates widgets). Failures never crash the app: a failed refresh
marks the screen stale and notifies once per failure streak; a failed action notifies its error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.screen import Screen

from tui.messages import EventsConnection, FleetEvent
from tui.widgets.confirm import ConfirmScreen
from tui.widgets.status import Freshness

if TYPE_CHECKING:
    from tui.app import FleetgateApp
    from tui.source import Source


@dataclass(frozen=True)
class PaletteAction:
    """A screen action offered in the command palette (mutating ones vanish in read-only mode)."""

    title: str
    help: str
    callback: Callable[[], Any]
    mutating: bool = False


class FleetScreen(Screen):
    """Base of the five screens. `REFRESH` False: the screen loads once per visit (and on `r`)."""

    REFRESH: ClassVar[bool] = True
    #: Actions that change the fleet: hidden from the footer and refused in read-only mode.
    MUTATING_ACTIONS: ClassVar[frozenset[str]] = frozenset()

    @property
    def fleet_app(self) -> FleetgateApp:
        return self.app  # type: ignore[return-value]

    @property
    def source(self) -> Source:
        return self.fleet_app.source

    @property
    def read_only(self) -> bool:
        return self.fleet_app.read_only

    # -- refresh -------------------------------------------------------------------------------

    def fetch(self) -> Any:
        """Read this screen's data (blocking; a worker thread). Raise to mark the screen stale."""
        raise NotImplementedError

    def show(self, data: Any) -> None:
        """Render what `fetch` returned (the event loop)."""
        raise NotImplementedError

    def freshness(self) -> Freshness | None:
        found = self.query(Freshness)
        return found.first() if found else None

    def on_mount(self) -> None:
        self._failure: tuple[str, object] | None = None  # the kind of failure last notified, until a success
        self.fleet_app.register_screen(self)
        if self.REFRESH:
            self.set_interval(self.fleet_app.refresh_s, self._tick)
        self.refresh_data()

    def on_screen_resume(self) -> None:
        # The first resume follows on_mount, which already started a refresh.
        if getattr(self, "_resumed_before", False):
            self.refresh_data()
        self._resumed_before = True

    def _tick(self) -> None:
        if self.is_current:
            self.refresh_data()

    def refresh_data(self) -> None:
        """Start a refresh now (at most one runs per screen; a newer one replaces an older)."""
        self._load()

    @work(thread=True, exclusive=True, group="refresh")
    def _load(self) -> None:
        try:
            data = self.fetch()
        except Exception as e:  # noqa: BLE001 - shown as the stale marker and a notification, never lost
            self.app.call_from_thread(self._refresh_failed, e)
            return
        self.app.call_from_thread(self._refreshed, data)

    def _refreshed(self, data: Any) -> None:
        self._failure = None
        try:
            self.show(data)
        except Exception as e:  # noqa: BLE001 - a rendering bug must not take the console down
            self._refresh_failed(e)
            return
        marker = self.freshness()
        if marker is not None:
            marker.good(self.source.now())

    def _refresh_failed(self, error: BaseException) -> None:
        reason = self.fleet_app.describe_error(error)
        marker = self.freshness()
        if marker is not None:
            marker.failed(reason)
        kind = (type(error).__name__, getattr(error, "status", None))
        if kind != self._failure:  # once per failure, again when its kind changes (timeout → 401)
            self._failure = kind
            self.notify(reason, title=f"{self.title or 'refresh'} failed", severity="error")

    def action_refresh(self) -> None:
        self.refresh_data()

    # -- events --------------------------------------------------------------------------------

    def on_fleet_event(self, event: FleetEvent) -> None:
        """A live event (rollout / registry / health): screens that show such data override this."""

    def on_events_connection(self, event: EventsConnection) -> None:
        """The event stream connected or dropped."""

    # -- actions -------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.MUTATING_ACTIONS and self.read_only:
            return False  # hidden from the footer and not run
        return True

    def confirm(self, question: str, then: Callable[[], Any], *, confirm_label: str = "Confirm") -> None:
        """Ask first; run `then` only on yes."""
        def answered(yes: bool | None) -> None:
            if yes:
                then()

        self.app.push_screen(ConfirmScreen(question, confirm_label=confirm_label), answered)

    def run_action(self, description: str, func: Callable[..., Any], *args: Any,
                   done: Callable[[Any], Any] | None = None) -> None:
        """Run a mutating call in a worker; notify its outcome; refresh. Refused in read-only mode."""
        if self.read_only:
            self.notify(f"{description}: refused, the console is read-only", severity="warning")
            return
        self._act(description, func, args, done)

    @work(thread=True, group="actions")
    def _act(self, description: str, func: Callable[..., Any], args: tuple[Any, ...],
             done: Callable[[Any], Any] | None) -> None:
        try:
            result = func(*args)
        except Exception as e:  # noqa: BLE001 - every failure is reported to the operator
            self.app.call_from_thread(self.notify, self.fleet_app.describe_error(e),
                                      title=f"{description} failed", severity="error")
            return
        self.app.call_from_thread(self._acted, description, result, done)

    def _acted(self, description: str, result: Any, done: Callable[[Any], Any] | None) -> None:
        if done is not None:
            done(result)
        else:
            self.notify(description, title="done")
        self.refresh_data()

    def palette_actions(self) -> Iterable[PaletteAction]:
        """This screen's actions for the command palette."""
        return ()
