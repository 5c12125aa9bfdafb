"""Where notifications go, by the values file's `notifications[].kind`: the one place a sink
kind is built from its settings.

A new kind is one entry in `SINK_KINDS` (what it reads from the environment and how it is
made) and its name in the settings' `_Notification` model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from driftgate.notify import Claim, Event, Notifier, Sink, SlackSink, WebhookSink
from driftgate.service.environment import from_environment
from driftgate.settings import NotificationSettings, RolloutSettings, Settings, SettingsError

__all__ = ["SINK_KINDS", "SinkKind", "build_notifier", "build_sink", "sink_environment"]


@dataclass(frozen=True)
class SinkKind:
    """How one kind of notification sink is made: the environment variables its settings
    name, as (values key, variable), and the builder, which reads them from `environ`. The
    builders take the values key of the entry (`notifications[0]`) to name it in errors."""

    environment: Callable[[NotificationSettings, str], list[tuple[str, str]]]
    build: Callable[[NotificationSettings, str, Mapping[str, str] | None], Sink]


def _events(entry: NotificationSettings) -> list[Event] | None:
    return [Event(e) for e in entry.events] or None


def _slack_environment(entry: NotificationSettings, where: str) -> list[tuple[str, str]]:
    return [(f"{where}.url_env", entry.url_env)]


def _slack(entry: NotificationSettings, where: str, environ: Mapping[str, str] | None) -> Sink:
    return SlackSink(from_environment(entry.url_env, f"{where}.url_env", environ), _events(entry))


def _webhook_environment(entry: NotificationSettings, where: str) -> list[tuple[str, str]]:
    return [(f"{where}.url_env", entry.url_env), (f"{where}.secret_env", entry.secret_env or "")]


def _webhook(entry: NotificationSettings, where: str, environ: Mapping[str, str] | None) -> Sink:
    url = from_environment(entry.url_env, f"{where}.url_env", environ)
    secret = from_environment(entry.secret_env or "", f"{where}.secret_env", environ)
    return WebhookSink(url, secret, _events(entry))


SINK_KINDS: Mapping[str, SinkKind] = {
    "slack": SinkKind(_slack_environment, _slack),
    "webhook": SinkKind(_webhook_environment, _webhook),
}
"""Every kind `notifications[].kind` may name."""


def _kind(entry: NotificationSettings, where: str) -> SinkKind:
    try:
        return SINK_KINDS[entry.kind]
    except KeyError:
        raise SettingsError(
            f"{where}.kind: {entry.kind!r} is not a notification kind "
            f"(known: {', '.join(SINK_KINDS)})"
        ) from None


def sink_environment(settings: Settings) -> list[tuple[str, str]]:
    """The environment variables the notification sinks name, as (values key, variable)."""
    names: list[tuple[str, str]] = []
    for i, entry in enumerate(settings.notifications):
        names += _kind(entry, f"notifications[{i}]").environment(entry, f"notifications[{i}]")
    return names


def build_sink(
    entry: NotificationSettings, where: str, environ: Mapping[str, str] | None = None
) -> Sink:
    """The sink one `notifications[]` entry describes (`where` names it, e.g.
    `notifications[0]`), its URL and secret read from `environ`; a SettingsError or
    ValueError naming the key at fault."""
    return _kind(entry, where).build(entry, where, environ)


def build_notifier(
    settings: Settings,
    claim: Claim | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    rollout: RolloutSettings | None = None,
) -> Notifier | None:
    """The notifier of every sink the values name, or None without any; in a fleet, `claim`
    (the shared store's) lets one replica send each notification. For one rollout of
    `rollouts:`, each sink takes only the events of its `notify_events` too, and the status
    link is its `status_url`."""
    only = set(rollout.notify_events) if rollout is not None and rollout.notify_events else None
    sinks = []
    for i, entry in enumerate(settings.notifications):
        if only is not None:
            events = tuple(e for e in (entry.events or tuple(only)) if e in only)
            if not events:
                continue  # nothing this rollout announces goes to this sink
            entry = dataclasses.replace(entry, events=events)
        sinks.append(build_sink(entry, f"notifications[{i}]", environ))
    if not sinks:
        return None
    status_url = settings.status_url if rollout is None else rollout.status_url
    return Notifier(sinks, claim=claim, status_url=status_url)
