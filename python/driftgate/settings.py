"""Service settings from a Helm-style values file (YAML), every key validated.

enforce_enabled: true
enforce_rollout_percent: 25
drift_max_ratio: 0.005
enforce_readiness_gate: {enabled: true, window: "5m", max_unready_replicas: 1}
rollout:
  enabled: true
  state_path: driftgate-state/rollout.json
  check_interval_seconds: 900
  stages: [{name: canary, percentage: 10, duration_seconds: 86400, max_error_rate: 0.005}]
  prometheus:           # error rate across replicas; without it, this process's own
    url: http://prometheus:9090
    query: >-
      sum(rate(guardian_enforcement_failed_total[$window]))
      / sum(rate(guardian_enforcement_total[$window]))
    timeout_seconds: 5
admin:
  token_env: DRIFTGATE_ADMIN_TOKEN
  token_file: approvers.tokens    # named approvers (hashed tokens and scopes)
  oidc: {issuer: https://id.example.com/realms/ops, audience: driftgate,
         jwks_url: https://id.example.com/realms/ops/protocol/openid-connect/certs}
  protect_status: false           # true: the status endpoint needs rollout:read
  people:                         # credentials of one person count as one approval
    alice: [token_file:alice, "oidc:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"]

The file is read strictly, so that a typo stops the service at start instead of changing what
it enforces: keys are strings and appear once per mapping, unknown keys are refused, a `true`
is not a number and a `20.0` not a count, and every number has a range wide enough for any
real deployment and narrow enough to catch a slip of the keyboard (a stage of more than ten
years, a check interval of more than a day). Every refusal is a `SettingsError` of one line
naming the file, and the line or the key.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from driftgate._core import (
    DEFAULT_ROLLOUT,
    EnforceOptions,
    GateConfig,
    RolloutConfig,
    RolloutStage,
)
from driftgate._messages import one_line, read_capped, shown
from driftgate.identity import ALLOWED_ALGORITHMS, People
from driftgate.readiness_budget import MAX_UNREADY_REPLICAS
from driftgate.rollout import PrometheusErrorRate

__all__ = [
    "DEFAULT_ROLLOUT",
    "LOG_LEVELS",
    "MAX_CHECK_INTERVAL_SECONDS",
    "MAX_ROLLOUTS",
    "MAX_STAGE_SECONDS",
    "MAX_VALUES_BYTES",
    "RolloutSettings",
    "Settings",
    "SettingsError",
    "load_settings",
    "parse_settings",
    "parse_values_file",
    "read_values_file",
    "values_key",
]

MAX_VALUES_BYTES = 64 << 10
"""A values file is a few hundred bytes; past 64 KiB it is the wrong file (and PyYAML would
take seconds to say so)."""
MAX_STAGE_SECONDS = 10 * 365 * 86400
"""A stage longer than ten years (315360000 s) is a typo, not a plan."""
MAX_CHECK_INTERVAL_SECONDS = 86400
"""A rollout checked less than once a day cannot react to the error rate of its own stages."""
MIN_CHECK_INTERVAL_SECONDS = 1
"""Each check reads the error-rate source; more than once a second only loads Prometheus."""
MAX_QUERY_TIMEOUT_SECONDS = 120
"""Prometheus gives up on a query after two minutes by default; waiting longer never helps."""
MAX_COUNT = 10**9
"""More requests than a window of any real service holds: a larger minimum never decides."""
MAX_STAGES = 100
MAX_NESTING = 32
"""A values file nests four levels deep; YAML that nests more than this is not one."""
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
"""What `log_level` (and `driftgate serve --log-level`) may be."""


class SettingsError(ValueError):
    """A values file that cannot be used; the message is one line naming the file, and the
    line or the key, and the bad value."""


@dataclass(frozen=True)
class StoreSettings:
    """Where a fleet shares its rollout state: Redis at the URL in the environment variable
    `url_env` (it may carry a password, so it never sits in the values file)."""

    kind: str = "redis"  # driftgate.service.stores.STORE_KINDS
    url_env: str = "DRIFTGATE_REDIS_URL"
    key: str = "driftgate:rollout"
    sync_interval_seconds: float = 5.0
    lease_ttl_seconds: float = 15.0
    # rediss:// only: the CA bundle the server's certificate is verified against (None: the
    # system's), and a client certificate and key for mutual TLS.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Redis behind Sentinel: "host:port" of each sentinel, the name they monitor the primary
    # under, and the variable holding the sentinels' password, if they have one.
    sentinels: tuple[str, ...] = ()
    sentinel_service: str | None = None
    sentinel_password_env: str | None = None
    max_clock_skew_seconds: float = 1.0
    # How many Redis replicas must confirm a commit (WAIT) before a move is answered as done,
    # and how long to wait for them; 0: the primary's word is enough.
    min_replicas_acked: int = 0
    replica_ack_timeout_seconds: float = 1.0


@dataclass(frozen=True)
class NotificationSettings:
    """One notification sink; its URL and secret come from environment variables."""

    kind: str  # slack or webhook
    url_env: str
    secret_env: str | None = None
    events: tuple[str, ...] = ()  # empty: every event


@dataclass(frozen=True)
class OIDCSettings:
    """The OAuth2/OIDC issuer whose JWTs name approvers (driftgate.identity.OIDCVerifier)."""

    issuer: str
    audience: str
    jwks_url: str
    actor_claim: str = "preferred_username"
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS


def _key(key: str) -> dict[str, str]:
    return {"key": key}


MAX_ROLLOUTS = 100
"""More rollouts than a service runs at once: past this `rollouts:` is refused."""


@dataclass(frozen=True)
class RolloutSettings:
    """One rollout of `rollouts:` (or the `default` one `rollout:` describes): its stages, the
    policies it governs (None: every policy no other rollout governs, the `default` one's),
    where its state is kept, and how it is checked and announced."""

    name: str
    config: RolloutConfig
    policies: tuple[str, ...] | None = None
    # "independent": a cohort salted by the rollout's name; "shared": the unsalted one
    cohort: str = "independent"
    state_path: Path = Path("driftgate-state/rollout.json")
    check_interval_seconds: float = 900.0
    min_requests: int = 0
    error_rate_source: PrometheusErrorRate | None = None
    store: StoreSettings | None = None
    status_url: str | None = None
    notify_events: tuple[str, ...] = ()  # empty: every event the sinks take

    @property
    def key(self) -> str:
        """Its values-file key: `rollout` for the default one, else `rollouts.NAME`."""
        return "rollout" if self.policies is None else f"rollouts.{self.name}"


@dataclass(frozen=True)
class Settings:
    """What a values file says, validated. Each field's metadata `key` is the values-file key
    it is read from, as written in the file (several, comma-separated, for a field built from
    more than one): messages about a field name that key (`values_key`)."""

    enforce: EnforceOptions = field(
        default_factory=EnforceOptions,
        metadata=_key("enforce_enabled, enforce_rollout_percent, drift_max_ratio"),
    )
    gate: GateConfig = field(default_factory=GateConfig, metadata=_key("enforce_readiness_gate"))
    rollout: RolloutConfig | None = field(
        default=None, metadata=_key("rollout.enabled, rollout.stages")
    )
    state_path: Path = field(
        default=Path("driftgate-state/rollout.json"), metadata=_key("rollout.state_path")
    )
    check_interval_seconds: float = field(
        default=900.0, metadata=_key("rollout.check_interval_seconds")
    )
    rollout_min_requests: int = field(default=0, metadata=_key("rollout.min_requests"))
    error_rate_source: PrometheusErrorRate | None = field(
        default=None, metadata=_key("rollout.prometheus")
    )
    admin_token_env: str = field(default="DRIFTGATE_ADMIN_TOKEN", metadata=_key("admin.token_env"))
    # The values name admin.token_env: its variable must hold the token, else the service
    # refuses to start. Not named, an unset variable only leaves the admin token out.
    admin_token_required: bool = field(default=False, metadata=_key("admin.token_env"))
    # None: the local state file at state_path
    store: StoreSettings | None = field(default=None, metadata=_key("rollout.store"))
    notifications: tuple[NotificationSettings, ...] = field(
        default=(), metadata=_key("notifications")
    )
    # linked from notifications
    status_url: str | None = field(default=None, metadata=_key("rollout.status_url"))
    # None: $DRIFTGATE_TOKEN_FILE, if set
    admin_token_file: Path | None = field(default=None, metadata=_key("admin.token_file"))
    admin_oidc: OIDCSettings | None = field(default=None, metadata=_key("admin.oidc"))
    admin_protect_status: bool = field(default=False, metadata=_key("admin.protect_status"))
    # person -> the credentials that are theirs (token_file:NAME, oidc:SUB)
    admin_people: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, metadata=_key("admin.people")
    )
    # With a shared store: how many replicas may fail readiness for drift at once.
    max_unready_replicas: int = field(
        default=1, metadata=_key("enforce_readiness_gate.max_unready_replicas")
    )
    # of the driftgate loggers and uvicorn's, under driftgate serve
    log_level: str = field(default="info", metadata=_key("log_level"))
    # `rollouts:`, each governing its policies (empty with `rollout:`, whose fields are above)
    rollouts: tuple[RolloutSettings, ...] = field(default=(), metadata=_key("rollouts"))

    def all_rollouts(self) -> tuple[RolloutSettings, ...]:
        """Every rollout the values describe: the `default` one of `rollout:`, or those of
        `rollouts:`."""
        if self.rollouts:
            return self.rollouts
        if self.rollout is None:
            return ()
        return (
            RolloutSettings(
                DEFAULT_ROLLOUT,
                self.rollout,
                state_path=self.state_path,
                check_interval_seconds=self.check_interval_seconds,
                min_requests=self.rollout_min_requests,
                error_rate_source=self.error_rate_source,
                store=self.store,
                status_url=self.status_url,
            ),
        )


def values_key(field_name: str) -> str:
    """The values-file key a Settings field is read from, as written in the file; KeyError for
    a name that is no field."""
    for each in dataclasses.fields(Settings):
        if each.name == field_name:
            return str(each.metadata["key"])
    raise KeyError(field_name)


# -- the schema ------------------------------------------------------------------------------


def _no_nul(text: str) -> str:
    """No path or query holds a NUL (pydantic already refuses unpaired surrogates)."""
    if "\0" in text:
        raise ValueError("contains a NUL character")
    return text


_Ratio = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
_Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
_StageSeconds = Annotated[float, Field(ge=0, le=MAX_STAGE_SECONDS, allow_inf_nan=False)]
_CheckInterval = Annotated[
    float,
    Field(ge=MIN_CHECK_INTERVAL_SECONDS, le=MAX_CHECK_INTERVAL_SECONDS, allow_inf_nan=False),
]
_QueryTimeout = Annotated[float, Field(gt=0, le=MAX_QUERY_TIMEOUT_SECONDS, allow_inf_nan=False)]
_Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
_PathText = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)]
_Query = Annotated[str, Field(min_length=1, max_length=10_000), AfterValidator(_no_nul)]
_Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
_EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


class _Section(BaseModel):
    # strict: no "20" for 20, no 1 for true, no 20.0 for a count; a float key takes an int
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Gate(_Section):
    enabled: bool = False
    window: Literal["5m", "15m", "60m"] = "5m"
    min_requests: _Count = 100
    reopen_ratio: _Ratio | None = None
    confidence: Annotated[float, Field(ge=0.5, lt=1)] | None = None
    max_unready_replicas: Annotated[int, Field(ge=1, le=MAX_UNREADY_REPLICAS)] = 1


class _Stage(_Section):
    name: _Name
    percentage: _Percent
    duration_seconds: _StageSeconds = 0.0
    max_error_rate: _Ratio = 0.0
    requires_approval: bool = False
    approvals_required: Annotated[int, Field(ge=1, le=10)] = 1


class _Prometheus(_Section):
    url: AnyHttpUrl
    query: _Query
    timeout_seconds: _QueryTimeout = 5.0


def _host_port(entry: str) -> str:
    """A sentinel's "host:port" ("[v6]:port" for an IPv6 address)."""
    host, _, port = entry.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (
        not re.fullmatch(r"[A-Za-z0-9_.:-]{1,253}", host)
        or not re.fullmatch(r"[0-9]{1,5}", port)
        or not 1 <= int(port) <= 65535
    ):
        raise ValueError("expected host:port with a port from 1 to 65535")
    return entry


_HostPort = Annotated[str, Field(min_length=3, max_length=300), AfterValidator(_host_port)]
_SentinelService = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


_SECRET_STORE_KEYS = {
    "url": "put it in an environment variable and name that in rollout.store.url_env",
    "password": "put it in the URL in the variable that rollout.store.url_env names",
    "sentinel_password": "put it in an environment variable and name that in "
    "rollout.store.sentinel_password_env",
}


class _Store(_Section):
    kind: Literal["redis"] = "redis"
    url_env: _EnvName = "DRIFTGATE_REDIS_URL"
    key: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:{}/-]{1,200}$")] = "driftgate:rollout"
    sync_interval_seconds: Annotated[float, Field(ge=0.05, le=3600, allow_inf_nan=False)] = 5.0
    lease_ttl_seconds: Annotated[float, Field(ge=0.1, le=3600, allow_inf_nan=False)] = 15.0
    tls_ca_file: _PathText | None = None
    tls_cert_file: _PathText | None = None
    tls_key_file: _PathText | None = None
    sentinels: Annotated[list[_HostPort], Field(min_length=1, max_length=16)] | None = None
    sentinel_service: _SentinelService | None = None
    sentinel_password_env: _EnvName | None = None
    max_clock_skew_seconds: Annotated[float, Field(ge=0.01, le=3600, allow_inf_nan=False)] = 1.0
    min_replicas_acked: Annotated[int, Field(ge=0, le=100)] = 0
    replica_ack_timeout_seconds: Annotated[float, Field(ge=0.01, le=60, allow_inf_nan=False)] = 1.0

    @model_validator(mode="before")
    @classmethod
    def _no_url(cls, values: Any) -> Any:
        # A Redis URL may carry a password: it comes from the environment only, as do the
        # passwords themselves.
        if isinstance(values, dict):
            for key, where in _SECRET_STORE_KEYS.items():
                if key in values:
                    raise ValueError(
                        f"{key} is never read from the values file (it is or may carry a "
                        f"secret): {where}"
                    )
        return values

    @model_validator(mode="after")
    def _together(self) -> _Store:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file: mutual TLS needs both or neither")
        if self.sentinels is None:
            for name in ("sentinel_service", "sentinel_password_env"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is set but sentinels is not")
        elif self.sentinel_service is None:
            raise ValueError(
                "sentinels needs sentinel_service: the name the sentinels monitor the primary under"
            )
        return self


_EventName = Literal[
    "advanced", "rolled_back", "aborted", "completed", "waiting_for_approval", "analysis_failing"
]


class _Notification(_Section):
    kind: Literal["slack", "webhook"]
    url_env: _EnvName
    secret_env: _EnvName | None = None
    events: Annotated[list[_EventName], Field(min_length=1, max_length=6)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, values: Any) -> Any:
        # Webhook URLs carry tokens, secrets are secrets: both come from the environment only.
        if isinstance(values, dict):
            for key in ("url", "secret"):
                if key in values:
                    raise ValueError(
                        f"a notification {key} is not read from the values file: put it in an "
                        f"environment variable and name that in {key}_env"
                    )
        return values

    @model_validator(mode="after")
    def _webhook_secret(self) -> _Notification:
        if self.kind == "webhook" and self.secret_env is None:
            raise ValueError("a webhook needs secret_env: its bodies are signed with that secret")
        return self


_EventList = Annotated[list[_EventName], Field(min_length=1, max_length=6)]


class _Rollout(_Section):
    enabled: bool = False
    status_url: AnyHttpUrl | None = None
    state_path: _PathText = "driftgate-state/rollout.json"
    check_interval_seconds: _CheckInterval = 900.0
    min_requests: _Count = 0
    stages: Annotated[list[_Stage], Field(min_length=1, max_length=MAX_STAGES)] | None = None
    prometheus: _Prometheus | None = None
    store: _Store | None = None


class _NamedRollout(_Rollout):
    """One entry of `rollouts:`: what `rollout:` holds, and the policies it governs."""

    enabled: bool = True
    policies: Annotated[list[_Name], Field(min_length=1, max_length=1000)]
    cohort: Literal["independent", "shared"] = "independent"
    notify_events: _EventList | None = None


def _issuer_url(url: str) -> str:
    """An issuer's URL is compared with the tokens' `iss` as written, so it is kept as given;
    its keys decide who is admin, so it is https, or http on this machine only (tests)."""
    _no_nul(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("expected an https:// URL") from None
    scheme = parts.scheme
    if not host:
        raise ValueError("expected an https:// URL with a host")
    if scheme == "https" or (scheme == "http" and host in ("127.0.0.1", "localhost", "::1")):
        return url
    raise ValueError(
        "expected an https:// URL (the issuer's keys decide who may move the rollout; plain "
        "http only to 127.0.0.1 or localhost)"
    )


_IssuerURL = Annotated[str, Field(min_length=8, max_length=2048), AfterValidator(_issuer_url)]


class _OIDC(_Section):
    issuer: _IssuerURL
    audience: Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_nul)]
    jwks_url: _IssuerURL
    actor_claim: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "preferred_username"
    algorithms: Annotated[
        list[Literal[ALLOWED_ALGORITHMS]],  # type: ignore[valid-type]
        Field(min_length=1, max_length=len(ALLOWED_ALGORITHMS)),
    ] = list(ALLOWED_ALGORITHMS)


_Subject = Annotated[str, Field(min_length=1, max_length=300)]


class _Admin(_Section):
    token_env: _EnvName = "DRIFTGATE_ADMIN_TOKEN"
    token_file: _PathText | None = None
    oidc: _OIDC | None = None
    protect_status: bool = False
    people: (
        Annotated[
            dict[_Name, Annotated[list[_Subject], Field(min_length=1, max_length=16)]],
            Field(max_length=1000),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _people(self) -> _Admin:
        People(self.people)  # a subject listed twice, or not one
        return self


class _Values(_Section):
    enforce_enabled: bool = False
    enforce_rollout_percent: _Percent = 0.0
    drift_max_ratio: _Ratio = 0.005
    enforce_readiness_gate: _Gate | None = None
    rollout: _Rollout | None = None
    admin: _Admin | None = None
    notifications: Annotated[list[_Notification], Field(max_length=16)] | None = None
    log_level: Literal[LOG_LEVELS] = "info"  # type: ignore[valid-type]
    rollouts: (
        Annotated[dict[_Name, _NamedRollout], Field(min_length=1, max_length=MAX_ROLLOUTS)] | None
    ) = None

    @model_validator(mode="after")
    def _one_kind_of_rollout(self) -> _Values:
        if self.rollout is not None and self.rollouts is not None:
            raise ValueError(
                "rollout and rollouts together: rollout is the one rollout governing every "
                "policy; name it default under rollouts instead"
            )
        governed: dict[str, str] = {}
        for name, entry in (self.rollouts or {}).items():
            for policy in entry.policies:
                if policy in governed:
                    first = governed[policy]
                    where = "twice" if first == name else f"by rollouts.{first} too"
                    raise ValueError(
                        f"rollouts.{name}.policies: {policy} is governed {where}: a policy "
                        "belongs to one rollout at most"
                    )
                governed[policy] = name
        return self


# -- one line per problem --------------------------------------------------------------------


def _key_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "values"


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema section that `loc` (a path of keys and list indices) points into."""
    section: type[BaseModel] | None = _Values
    for part in loc:
        if isinstance(part, int):
            continue
        fields = section.model_fields if section else {}
        section = _model_in(fields[part].annotation) if part in fields else None
    return section


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


_NUMERIC = {
    "float_type",
    "int_type",
    "finite_number",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
}
_EXPECTED = {
    "bool_type": "true or false",
    "string_type": "a string",
    "model_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
}


def _constraints(annotation: Any) -> list[Any]:
    """The annotated-types constraints (Ge, Le, ...) anywhere inside `annotation`."""
    found = list(getattr(annotation, "__metadata__", ()))
    for item in list(found):
        found.extend(getattr(item, "metadata", ()))
    for argument in get_args(annotation):
        found.extend(_constraints(argument))
    return found


def _number_range(loc: tuple[Any, ...]) -> str | None:
    """ "a number in [0, 100]" for the numeric key at `loc`, from the schema itself."""
    section = _section_at(loc[:-1])
    name = loc[-1] if loc else None
    if section is None or not isinstance(name, str) or name not in section.model_fields:
        return None
    info = section.model_fields[name]
    kinds = {info.annotation, *get_args(info.annotation)}
    kinds |= {get_args(kind)[0] for kind in kinds if hasattr(kind, "__metadata__")}
    noun = "a number" if float in kinds else "an integer" if int in kinds else None
    if noun is None:
        return None
    low, high = "(-inf", "inf)"
    for constraint in _constraints(info.annotation) + list(info.metadata):
        for attribute, bracket in (("ge", "["), ("gt", "("), ("le", "]"), ("lt", ")")):
            bound = getattr(constraint, attribute, None)
            if bound is not None:
                text = f"{bound:g}" if bound != int(bound) else str(int(bound))
                if attribute in ("ge", "gt"):
                    low = bracket + text
                else:
                    high = text + bracket
    return f"{noun} in {low}, {high}"


def _problem(error: Mapping[str, Any]) -> str:
    """One validation error as `key.path: expected ..., got VALUE`."""
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        section = _section_at(loc[:-1])
        known = ", ".join(section.model_fields) if section else ""
        return f"{_key_path(loc[:-1])}: unknown key {shown(loc[-1])} (known: {known})"
    if kind == "invalid_key":
        return f"{_key_path(loc[:-1])}: key {shown(loc[-1])} is not a string"
    if kind == "missing":
        return f"{_key_path(loc)}: missing (required)"
    if loc and loc[-1] == "[key]" and kind == "string_pattern_mismatch":  # a mapping's key
        return (
            f"{_key_path(loc[:-2])}: name {shown(loc[-2])} is not 1-64 characters of "
            "[A-Za-z0-9_.:-]"
        )
    expected = _number_range(loc) if kind in _NUMERIC else _EXPECTED.get(kind)
    if expected is not None:
        message = f"expected {expected}"
    elif kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        if not loc:  # a rule across keys: the message names them
            return message
        if isinstance(error.get("input"), Mapping):
            # A whole section was refused: it may hold a secret someone pasted, never echoed.
            return f"{_key_path(loc)}: {message}"
    elif kind == "literal_error":
        message = f"expected {error['ctx']['expected']}"
    else:
        message = error["msg"]
        if message[1:2].islower():  # "Input should ..." reads as "input should ...", "URL" stays
            message = message[:1].lower() + message[1:]
    return f"{_key_path(loc)}: {message}, got {shown(error.get('input'))}"


T = TypeVar("T")


def _build(what: str, make: Callable[[], T]) -> T:
    """Builds a core object from already-checked values; the core's own rules (stages that
    rise, a reopen ratio under the limit) are reported against the key they concern."""
    try:
        return make()
    except (ValueError, TypeError) as error:
        raise SettingsError(f"{what}: {one_line(str(error))}") from None


# -- values to settings ----------------------------------------------------------------------


def _store_settings(store: _Store) -> StoreSettings:
    values = store.model_dump()
    values["sentinels"] = tuple(values["sentinels"] or ())
    return StoreSettings(**values)


def parse_settings(values: Any) -> Settings:
    """Settings from already-parsed values (a dict; None for an empty file), or a
    SettingsError naming the key."""
    try:
        checked = _Values.model_validate({} if values is None else values)
    except ValidationError as error:
        # a bad key first: a misspelt key is also the cause of the "missing" one
        problems = sorted(
            error.errors(include_url=False),
            key=lambda e: e["type"] not in ("invalid_key", "extra_forbidden"),
        )
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SettingsError(_problem(problems[0]) + more) from None
    enforce = _build(
        "enforce_rollout_percent",
        lambda: EnforceOptions(
            checked.enforce_enabled, checked.enforce_rollout_percent, checked.drift_max_ratio
        ),
    )
    gate_values = checked.enforce_readiness_gate or _Gate()
    gate = _build(
        "enforce_readiness_gate",
        lambda: GateConfig(
            enabled=gate_values.enabled,
            window=gate_values.window,
            max_ratio=checked.drift_max_ratio,
            min_requests=gate_values.min_requests,
            reopen_ratio=gate_values.reopen_ratio,
            confidence=gate_values.confidence,
        ),
    )
    rollout_values = checked.rollout or _Rollout()
    default = _rollout_settings(DEFAULT_ROLLOUT, rollout_values, "rollout", None)
    rollouts = tuple(
        each
        for name, entry in (checked.rollouts or {}).items()
        if (each := _rollout_settings(name, entry, f"rollouts.{name}", entry)) is not None
    )
    admin = checked.admin or _Admin()
    return Settings(
        enforce=enforce,
        gate=gate,
        rollout=None if default is None else default.config,
        state_path=Path(rollout_values.state_path),
        check_interval_seconds=rollout_values.check_interval_seconds,
        rollout_min_requests=rollout_values.min_requests,
        error_rate_source=None if default is None else default.error_rate_source,
        admin_token_env=admin.token_env,
        admin_token_required="token_env" in admin.model_fields_set,
        store=None if rollout_values.store is None else _store_settings(rollout_values.store),
        notifications=tuple(
            NotificationSettings(
                kind=n.kind,
                url_env=n.url_env,
                secret_env=n.secret_env,
                events=tuple(n.events or ()),
            )
            for n in checked.notifications or ()
        ),
        status_url=None if rollout_values.status_url is None else str(rollout_values.status_url),
        admin_token_file=None if admin.token_file is None else Path(admin.token_file),
        admin_oidc=None
        if admin.oidc is None
        else OIDCSettings(
            issuer=admin.oidc.issuer,
            audience=admin.oidc.audience,
            jwks_url=admin.oidc.jwks_url,
            actor_claim=admin.oidc.actor_claim,
            algorithms=tuple(dict.fromkeys(admin.oidc.algorithms)),
        ),
        admin_protect_status=admin.protect_status,
        admin_people={person: tuple(subjects) for person, subjects in (admin.people or {}).items()},
        max_unready_replicas=gate_values.max_unready_replicas,
        log_level=checked.log_level,
        rollouts=rollouts,
    )


def _rollout_settings(
    name: str, values: _Rollout, key: str, named: _NamedRollout | None
) -> RolloutSettings | None:
    """The rollout `values` describe at `key` (None while it is not enabled; its stages and
    error-rate source are checked all the same: it will be). A `rollouts:` entry (`named`)
    without a state_path or a store key gets its own, derived from its name; the one named
    default keeps the defaults."""
    config = None
    if values.stages is not None:
        stages = [
            _build(
                f"{key}.stages[{i}]",
                functools.partial(
                    RolloutStage,
                    stage.name,
                    stage.percentage,
                    stage.duration_seconds,
                    stage.max_error_rate,
                    stage.requires_approval,
                    approvals_required=stage.approvals_required,
                ),
            )
            for i, stage in enumerate(values.stages)
        ]
        config = _build(f"{key}.stages", lambda: RolloutConfig(stages))
    source = None
    if values.prometheus is not None:
        prometheus = values.prometheus
        source = _build(
            f"{key}.prometheus",
            lambda: PrometheusErrorRate(
                str(prometheus.url), prometheus.query, timeout=prometheus.timeout_seconds
            ),
        )
    if not values.enabled:
        return None
    state_path = Path(values.state_path)
    store = None if values.store is None else _store_settings(values.store)
    if named is not None and name != DEFAULT_ROLLOUT:
        if "state_path" not in values.model_fields_set:
            state_path = state_path.with_name(f"rollout-{name}.json")
        if (
            store is not None
            and values.store is not None
            and "key" not in values.store.model_fields_set
        ):
            # a hash tag: all of one rollout's keys in one Redis Cluster slot
            assert store is not None
            store = dataclasses.replace(store, key=f"{store.key}:{{{name}}}")
    return RolloutSettings(
        name,
        config or RolloutConfig.default(),
        policies=None if named is None else tuple(named.policies),
        cohort="independent" if named is None else named.cohort,
        state_path=state_path,
        check_interval_seconds=values.check_interval_seconds,
        min_requests=values.min_requests,
        error_rate_source=source,
        store=store,
        status_url=None if values.status_url is None else str(values.status_url),
        notify_events=() if named is None else tuple(named.notify_events or ()),
    )


# -- the file --------------------------------------------------------------------------------


class _RefusedYAML(yaml.constructor.ConstructorError):
    """Parsed YAML that no values file may hold."""


class _ValuesLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the checks a values file needs and plain YAML does not make:
    nesting is shallow, keys are strings and appear once per mapping, integers are ones Python
    converts. (The pure-Python loader: libyaml's crashes the process on deep nesting.)"""

    # PyYAML's scanner takes time quadratic in the nesting depth (3 KB of `{` take seconds)
    # and its composer recurses once per level: refuse depth before either matters.
    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        self._check_depth(self.flow_level)
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        self._check_depth(len(self.indents))
        return super().add_indent(column)

    def _check_depth(self, depth: int) -> None:
        if depth >= MAX_NESTING:
            raise _RefusedYAML(
                None, None, f"nested deeper than {MAX_NESTING} levels", self.get_mark()
            )

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may override
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, str):  # `1:`, or `on:` which YAML 1.1 reads as true
                    raise _RefusedYAML(
                        None,
                        None,
                        f"key {shown(key_node.value)} is not a string (YAML reads it as "
                        f"{shown(key)}; quote it)",
                        key_node.start_mark,
                    )
                if key in first:
                    line = first[key].start_mark.line + 1
                    raise _RefusedYAML(
                        None,
                        None,
                        f"key {shown(key)} appears twice (first on line {line})",
                        key_node.start_mark,
                    )
                first[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts (4300)
            raise _RefusedYAML(
                None, None, f"an integer of {len(node.value)} characters", node.start_mark
            ) from None


_ValuesLoader.add_constructor("tag:yaml.org,2002:int", _ValuesLoader.construct_yaml_int)


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """`LINE:COLUMN: problem`, one line, from PyYAML's several-line message."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    what = "" if isinstance(error, _RefusedYAML) else "not valid YAML: "
    if mark is not None and problem:
        return f"{mark.line + 1}:{mark.column + 1}: {what}{one_line(problem)}"
    position = getattr(error, "position", None)  # ReaderError: a character YAML forbids
    if position is not None:
        return f"{text.count(chr(10), 0, position) + 1}: {what}{one_line(str(error))}"
    return f" {what}{one_line(str(error))}"


def load_settings(path: str | Path | None) -> Settings:
    """Settings from a YAML values file; the defaults when `path` is None."""
    if path is None:
        return Settings()
    return parse_values_file(read_values_file(path), path)


def read_values_file(path: str | Path) -> bytes:
    """The bytes of a values file, or a SettingsError naming it (unreadable, or too large to
    be one)."""
    return read_capped(path, MAX_VALUES_BYTES, SettingsError, ": not a values file")


def parse_values_file(raw: bytes, path: str | Path) -> Settings:
    """Settings from the bytes of the values file at `path` (named in every message)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise SettingsError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})"
        ) from None
    try:
        values = yaml.load(text, Loader=_ValuesLoader)
    except yaml.YAMLError as error:
        raise SettingsError(f"{path}:{_yaml_problem(error, text)}") from None
    except RecursionError:
        raise SettingsError(f"{path}: not a values file: nested too deeply") from None
    try:
        return parse_settings(values)
    except SettingsError as error:
        raise SettingsError(f"{path}: {error}") from None
