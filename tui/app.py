"""The Fleetgate console (`opsctl tui`): five screens over the admin API, the event stream and the lake.

Screens are Textual modes, built on first visit (only the overview is imported at start-up, so
the first frame draws fast). One worker thread follows `/admin/v1/events` and hands each event
to every screen; each screen refreshes its own data in its own worker. Nothing here computes
figures: screens render what `opsctl` and `analytics_lake` return.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from gateway.errors import FleetgateError
from tui.messages import EventsConnection, FleetEvent

if TYPE_CHECKING:
    from tui.screens.base import FleetScreen
    from tui.source import Source

# mode name → (title, "module:Class"); the key binding is the position (1-5).
SCREENS: dict[str, tuple[str, str]] = {
    "overview": ("Overview", "tui.screens.overview:OverviewScreen"),
    "registry": ("Registry", "tui.screens.registry:RegistryScreen"),
    "rollouts": ("Rollouts", "tui.screens.rollouts:RolloutsScreen"),
    "usage": ("Usage", "tui.screens.usage:UsageScreen"),
    "orgs": ("Orgs & keys", "tui.screens.orgs:OrgsScreen"),
}
RECONNECT_DELAYS_S = (1.0, 2.0, 5.0)
TERMINAL_CHECK_S = 1.0


def _screen_factory(target: str) -> Any:
    def build() -> Screen:
        module, name = target.split(":")
        return getattr(importlib.import_module(module), name)()

    return build


class FleetgateApp(App):
    """The console. `source` is where data comes from (live gateway or a replay)."""

    CSS_PATH = "app.tcss"
    TITLE = "Fleetgate"
    ENABLE_COMMAND_PALETTE = True
    MODES = {name: _screen_factory(target) for name, (_, target) in SCREENS.items()}
    BINDINGS = [
        *(Binding(str(i), f"switch_mode('{name}')", title, show=True)
          for i, (name, (title, _)) in enumerate(SCREENS.items(), start=1)),
        Binding("r", "refresh_screen", "Refresh", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, source: Source, *, read_only: bool = False, refresh_s: float = 2.0,
                 screen: str = "overview", follow_events: bool = True) -> None:
        super().__init__()
        self.source = source
        self.read_only = read_only or source.read_only
        self.refresh_s = refresh_s
        self.start_screen = screen
        self.follow_events = follow_events
        self.events_connected = False
        self._fleet_screens: list[FleetScreen] = []
        self._stopping = threading.Event()
        self.sub_title = source.label + (" · read-only" if self.read_only else "")

    def compose(self) -> ComposeResult:
        return iter(())

    def on_mount(self) -> None:
        self.switch_mode(self.start_screen)
        if self.follow_events:
            self._follow_events()
        if self.source.live and not self.read_only:
            self._learn_role()
        if not self.is_headless:
            self.set_interval(TERMINAL_CHECK_S, self._check_terminal)

    def _check_terminal(self) -> None:
        """Quit when the terminal is gone. A pseudo-terminal whose other side closed without a SIGHUP
        (a killed emulator or tmux pane, a dropped session manager) reads as endless EOF, which would keep
        the input loop spinning at a full core forever; the terminal's attributes then fail with EIO."""
        import termios

        try:
            termios.tcgetattr(sys.__stdin__.fileno())
        except (OSError, termios.error, ValueError, AttributeError):
            self.exit(return_code=1, message="opsctl tui: the terminal went away")

    @work(thread=True, group="whoami", exit_on_error=False)
    def _learn_role(self) -> None:
        """A viewer's token can change nothing: turn read-only at once instead of letting every action fail with 403."""
        try:
            who = self.source.get("/admin/v1/whoami")
        except Exception:  # noqa: BLE001 - an older gateway, or none yet: the screens report what is wrong
            return
        if isinstance(who, dict) and who.get("role") == "viewer":
            self.call_from_thread(self._become_read_only, str(who.get("actor", "viewer")))

    def _become_read_only(self, actor: str) -> None:
        self.read_only = True
        self.sub_title = f"{self.source.label} · read-only ({actor} is a viewer)"
        self.screen.refresh_bindings()

    def on_unmount(self) -> None:
        self._stopping.set()
        self.source.close()

    # -- screens ------------------------------------------------------------------------------

    def register_screen(self, screen: FleetScreen) -> None:
        """Screens register on mount so live events reach them while they are not on top."""
        self._fleet_screens.append(screen)

    def action_refresh_screen(self) -> None:
        refresh = getattr(self.screen, "refresh_data", None)
        if refresh is not None:
            refresh()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for name, (title, _) in SCREENS.items():
            yield SystemCommand(f"Go to {title}", f"Show the {title} screen",
                                lambda name=name: self.switch_mode(name))
        from tui.screens.base import FleetScreen

        if isinstance(screen, FleetScreen):
            for action in screen.palette_actions():
                if not (action.mutating and self.read_only):
                    yield SystemCommand(action.title, action.help, action.callback)
        yield from super().get_system_commands(screen)

    # -- errors -------------------------------------------------------------------------------

    @staticmethod
    def describe_error(error: BaseException) -> str:
        """One readable line for a notification (never a traceback, never a secret)."""
        if isinstance(error, FleetgateError):
            status = getattr(error, "status", None)
            if status in (401, 403):
                return f"forbidden ({status}): {error}"
            return str(error)
        return f"{type(error).__name__}: {error}"

    # -- live events --------------------------------------------------------------------------

    @work(thread=True, group="events", exit_on_error=False)
    def _follow_events(self) -> None:
        """Read `/admin/v1/events` for as long as the app runs; reconnect with back-off."""
        from tui.source import ReplaySource

        failures = 0
        while not self._stopping.is_set():
            def opened() -> None:
                nonlocal failures
                failures = 0
                self.call_from_thread(self._dispatch, EventsConnection(True))

            try:
                for type_, data in self.source.events(on_open=opened):
                    if self._stopping.is_set():
                        return
                    self.call_from_thread(self._dispatch, FleetEvent(type_, data))
                reason = "the gateway ended the event stream"
            except Exception as e:  # noqa: BLE001 - shown on the screens; the loop reconnects
                reason = self.describe_error(e)
            if isinstance(self.source, ReplaySource) or self._stopping.is_set():
                return
            self.call_from_thread(self._dispatch, EventsConnection(False, reason))
            delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
            failures += 1
            self._stopping.wait(delay)

    def _dispatch(self, message: FleetEvent | EventsConnection) -> None:
        if isinstance(message, EventsConnection):
            self.events_connected = message.connected
        for screen in self._fleet_screens:
            if screen.is_attached:
                screen.post_message(message)
