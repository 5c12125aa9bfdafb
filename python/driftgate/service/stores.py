"""Where a rollout's state is kept, by the values file's `rollout.store.kind`: the one place a
store kind is built from its settings. Without `rollout.store` the state is the local file
at `rollout.state_path`.

A new kind is one entry in `STORE_KINDS` (what it reads from the environment and how it is
made) and its keys in the settings' `_Store` model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from driftgate._core import StateStoreError
from driftgate.service.environment import from_environment
from driftgate.settings import SettingsError, StoreSettings
from driftgate.store import RedisStateStore

__all__ = ["STORE_KINDS", "StoreKind", "build_store", "store_environment"]


@dataclass(frozen=True)
class StoreKind:
    """How one kind of shared store is made: the environment variables its settings name, as
    (values key, variable), and the builder, which reads them from `environ`."""

    environment: Callable[[StoreSettings], list[tuple[str, str]]]
    build: Callable[[StoreSettings, Mapping[str, str] | None], RedisStateStore]


def _redis_environment(settings: StoreSettings) -> list[tuple[str, str]]:
    names = [("rollout.store.url_env", settings.url_env)]
    if settings.sentinel_password_env is not None:
        names.append(("rollout.store.sentinel_password_env", settings.sentinel_password_env))
    return names


def _redis(settings: StoreSettings, environ: Mapping[str, str] | None) -> RedisStateStore:
    """Redis at the URL in `url_env` (it may carry a password, so it never sits in the values
    file). A Redis that answers but refuses the store's user, its password or its certificate
    stops the start with one line; one that does not answer yet is followed until it does."""
    url = from_environment(settings.url_env, "rollout.store.url_env", environ)
    password = None
    if settings.sentinel_password_env is not None:
        password = from_environment(
            settings.sentinel_password_env, "rollout.store.sentinel_password_env", environ
        )
    try:
        store = RedisStateStore(
            url,
            settings.key,
            sync_interval_seconds=settings.sync_interval_seconds,
            lease_ttl_seconds=settings.lease_ttl_seconds,
            tls_ca_file=settings.tls_ca_file,
            tls_cert_file=settings.tls_cert_file,
            tls_key_file=settings.tls_key_file,
            sentinels=settings.sentinels or None,
            sentinel_service=settings.sentinel_service,
            sentinel_password=password,
            max_clock_skew_seconds=settings.max_clock_skew_seconds,
            min_replicas_acked=settings.min_replicas_acked,
            replica_ack_timeout=settings.replica_ack_timeout_seconds,
        )
    except ValueError as error:
        # The store names its own argument: the values file's key is rollout.store.<that>.
        message = str(error)
        if message.startswith(("tls_", "sentinel")):
            message = f"rollout.store.{message}"
        raise SettingsError(message) from None
    try:
        store.check_access()
    except StateStoreError as error:
        store.close()
        raise SettingsError(f"rollout.store: {error}") from None
    return store


STORE_KINDS: Mapping[str, StoreKind] = {"redis": StoreKind(_redis_environment, _redis)}
"""Every kind `rollout.store.kind` may name."""


def _kind(settings: StoreSettings) -> StoreKind:
    try:
        return STORE_KINDS[settings.kind]
    except KeyError:
        raise SettingsError(
            f"rollout.store.kind: {settings.kind!r} is not a store kind "
            f"(known: {', '.join(STORE_KINDS)})"
        ) from None


def store_environment(settings: StoreSettings) -> list[tuple[str, str]]:
    """The environment variables the store's settings name, as (values key, variable)."""
    return _kind(settings).environment(settings)


def build_store(
    settings: StoreSettings, environ: Mapping[str, str] | None = None
) -> RedisStateStore:
    """The shared store `settings` describe, its secrets read from `environ` (default: the
    process's environment); a SettingsError naming the key at fault."""
    return _kind(settings).build(settings, environ)
