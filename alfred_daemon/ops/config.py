"""The daemon's config file: one TOML document with every knob, validated at start.

Sections map onto the dataclasses that own the knobs (so there is one list of knobs, one set
of defaults and one place each is range-checked)::

    [processor] [coordination] [limits] [alerts] [workers] [models]   runtime
    [engine] [engine.vad] [engine.stt] [engine.turn]                  per-session defaults
    [runtime]   runtime_dir, shm_prefix, ring_seconds, drain_grace, daemon_id, ...
    [grpc] [http] [webrtc] [logging] [security]

Errors name the key and what is allowed (``processor.max_batch_size = 0 is out of range;
allowed 1 .. 256``, ``unknown key limits.maxMemoryMB; allowed: ...``). Environment variables
override the file: ``ALFRED__<SECTION>__<KEY>=value`` (``ALFRED__ENGINE__STT__BEAM_SIZE=1``,
``ALFRED__LIMITS__MAXMEMORYUSAGEMB=2048``; key names are matched case-insensitively, values
are TOML scalars or bare strings).

On SIGHUP the daemon re-reads the file: what can change live (:data:`LIVE`) is applied, the
rest is reported as needing a restart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api.grpc_config import GrpcConfig
from ..api.http_server import HttpConfig
from ..api.webrtc_ice import WebRtcConfig
from ..engine.config import EngineConfig, SttConfig, TurnConfig, VadConfig
from ..engine.errors import ConfigError
from ..engine.models import ModelsConfig
from ..runtime.backpressure import BackpressureConfig
from ..runtime.config import LimitsConfig, ProcessorConfig, RuntimeConfig, WorkersConfig
from ..runtime.health import AlertThresholds
from .security import SecurityConfig

ENV_PREFIX = "ALFRED__"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"
    """text (journald-aware) or json."""
    file: str | None = None
    """Also log to this size-rotated file, e.g. logs/alfred-daemon.log."""
    pid_file: str | None = None

    def __post_init__(self) -> None:
        if self.level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"logging.level = {self.level!r}; allowed debug, info, warning, "
                              "error")
        if self.format not in ("text", "json"):
            raise ConfigError(f"logging.format = {self.format!r}; allowed text, json")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    webrtc: WebRtcConfig = field(default_factory=WebRtcConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)


_RUNTIME_SECTIONS: dict[str, type[Any]] = {
    "processor": ProcessorConfig, "coordination": BackpressureConfig, "limits": LimitsConfig,
    "alerts": AlertThresholds, "workers": WorkersConfig, "models": ModelsConfig,
}
_ENGINE_SECTIONS: dict[str, type[Any]] = {"vad": VadConfig, "stt": SttConfig,
                                          "turn": TurnConfig}
_RUNTIME_SCALARS = ("runtime_dir", "shm_prefix", "ring_seconds", "max_lag_ms",
                    "health_event_interval", "drain_grace", "job_cost_multiplier",
                    "vad_cost_ms_per_window", "daemon_id")
LIVE = frozenset({"processor.max_concurrent_sessions", "processor.frame_queue_size",
                  "processor.max_batch_size", "processor.batch_processing",
                  "processor.processing_timeout", "processor.reserved_job_lanes",
                  "processor.reserve_patience_ms",
                  "processor.memory_optimization", "coordination", "limits", "alerts",
                  "engine", "runtime.max_lag_ms", "runtime.health_event_interval",
                  "runtime.drain_grace", "logging.level"})
"""What SIGHUP applies without a restart (a section name covers all its keys)."""


_SCALARS: dict[Any, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
}
"""Scalar types a config value may have: the test it must pass, and what to call it.
(``bool`` is an ``int`` to Python; ``true`` is no integer to a config file.)"""


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` (int -> float, list -> tuple), or ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return _check_union(key, value, typing.get_args(hint))
    if origin is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} = {value!r} must be a list of strings")
        return tuple(value)
    if hint in _SCALARS:
        ok, what = _SCALARS[hint]
        if not ok(value):
            raise ConfigError(f"{key} = {value!r} must be {what}")
        return float(value) if hint is float else value
    return value


def _check_union(key: str, value: Any, args: tuple[Any, ...]) -> Any:
    """The first member of ``args`` that ``value`` fits; else the first member's error."""
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _check_type(key, value, arg)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")


def _shown(key: str) -> str:
    """A key as the error sentence shows it: bare if TOML would write it bare, else quoted
    with escapes, so a key holding a newline or a control character cannot break the
    one-line error (or forge a second line in a log)."""
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return json.dumps(key)


def _build(cls: type[Any], table: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{prefix}] must be a table")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"unknown key {prefix}.{_shown(key)}; allowed: {', '.join(names)}")
        kwargs[key] = _check_type(f"{prefix}.{key}", value, hints[key])
    return cls(**kwargs)


def from_mapping(doc: Mapping[str, Any]) -> DaemonConfig:
    """Validate a parsed TOML document into a DaemonConfig (or raise ConfigError)."""
    known = {*_RUNTIME_SECTIONS, "engine", "runtime", "grpc", "http", "webrtc", "logging",
             "security"}
    for section in doc:
        if section not in known:
            raise ConfigError(f"unknown section [{_shown(section)}]; allowed: "
                              f"{', '.join(sorted(known))}")
    runtime_kwargs: dict[str, Any] = {
        name: _build(cls, doc.get(name, {}), name) for name, cls in _RUNTIME_SECTIONS.items()}
    for name in ("engine", "runtime"):
        if not isinstance(doc.get(name, {}), Mapping):
            raise ConfigError(f"[{name}] must be a table")
    engine_doc = dict(doc.get("engine", {}))
    engine_kwargs: dict[str, Any] = {
        name: _build(cls, engine_doc.pop(name, {}), f"engine.{name}")
        for name, cls in _ENGINE_SECTIONS.items()}
    for key, value in engine_doc.items():
        if key != "frame_events":
            raise ConfigError(f"unknown key engine.{_shown(key)}; allowed: vad, stt, turn, "
                              "frame_events")
        engine_kwargs[key] = _check_type("engine.frame_events", value, bool)
    runtime_kwargs["engine"] = EngineConfig(**engine_kwargs)
    scalars = doc.get("runtime", {})
    hints = typing.get_type_hints(RuntimeConfig)
    for key, value in scalars.items():
        if key not in _RUNTIME_SCALARS:
            raise ConfigError(f"unknown key runtime.{_shown(key)}; allowed: "
                              f"{', '.join(_RUNTIME_SCALARS)}")
        runtime_kwargs[key] = _check_type(f"runtime.{key}", value, hints[key])
    return DaemonConfig(
        runtime=RuntimeConfig(**runtime_kwargs),
        grpc=_build(GrpcConfig, doc.get("grpc", {}), "grpc"),
        http=_build(HttpConfig, doc.get("http", {}), "http"),
        webrtc=_build(WebRtcConfig, doc.get("webrtc", {}), "webrtc"),
        logging=_build(LoggingConfig, doc.get("logging", {}), "logging"),
        security=_build(SecurityConfig, doc.get("security", {}), "security"),
    )


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_env(doc: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``doc`` with ``ALFRED__SECTION__[SUB__]KEY`` overrides merged in."""
    known = to_mapping(DaemonConfig())
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        target, ref = doc, known
        resolved: list[str] = []
        for i, part in enumerate(path):
            match = next((k for k in ref if k.lower() == part), None)
            if match is None:
                raise ConfigError(f"{_shown(name)}: unknown key "
                                  f"{'.'.join(_shown(k) for k in [*resolved, part])}")
            resolved.append(match)
            if i == len(path) - 1:
                target[match] = _env_value(raw)
            else:
                target = target.setdefault(match, {})
                ref = ref[match]
                if not isinstance(ref, dict):
                    raise ConfigError(f"{_shown(name)}: {'.'.join(resolved)} is not a section")
    return doc


def load(path: Path | None, environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """The file (or defaults when None) plus environment overrides, validated."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(path.read_bytes().decode())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except OSError as exc:  # a directory, no permission
            raise ConfigError(f"config file {path} cannot be read ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are "
                              "UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    doc = apply_env(doc, os.environ if environ is None else environ)
    return from_mapping(doc)


def to_mapping(cfg: DaemonConfig) -> dict[str, Any]:
    """The effective configuration as a TOML-shaped dict (``config show``)."""
    def plain(obj: Any) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(obj, f.name), tuple) else v)
                for f in dataclasses.fields(obj) if f.init}

    rt = cfg.runtime
    out: dict[str, Any] = {name: plain(getattr(rt, name)) for name in _RUNTIME_SECTIONS}
    out["engine"] = {"frame_events": rt.engine.frame_events,
                     **{name: plain(getattr(rt.engine, name)) for name in _ENGINE_SECTIONS}}
    out["runtime"] = {k: getattr(rt, k) for k in _RUNTIME_SCALARS}
    out["grpc"] = plain(cfg.grpc)
    out["http"] = plain(cfg.http)
    out["webrtc"] = plain(cfg.webrtc)
    out["logging"] = plain(cfg.logging)
    out["security"] = plain(cfg.security)
    return out


def dumps(doc: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for this document's shape (scalars, string lists, tables).
    ``None`` values are written as comments: TOML has no null, absent means default."""
    lines: list[str] = []
    tables = [(k, v) for k, v in doc.items() if isinstance(v, Mapping)]
    for key, value in doc.items():
        if isinstance(value, Mapping):
            continue
        if value is None:
            lines.append(f"# {key} = (unset: default)")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value!r}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(_quote(v) for v in value)}]")
        else:
            lines.append(f"{key} = {_quote(str(value))}")
    text = "\n".join(lines)
    for key, value in tables:
        name = f"{prefix}.{key}" if prefix else key
        body = dumps(value, name)
        text += f"\n\n[{name}]\n{body}" if text or prefix else f"[{name}]\n{body}"
    return text.strip("\n") + "\n" if not prefix else text


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def restart_needed(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """Keys that differ between ``old`` and ``new`` and cannot change while running."""
    def flat(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in doc.items():
            key = f"{prefix}.{k}" if prefix else k
            out.update(flat(v, key) if isinstance(v, Mapping) else {key: v})
        return out

    a, b = flat(to_mapping(old)), flat(to_mapping(new))
    changed = [k for k in a if a[k] != b.get(k)]
    return [k for k in changed
            if k not in LIVE and k.split(".")[0] not in LIVE]
