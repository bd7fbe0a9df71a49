"""The apiserver's configuration: every setting, its default, and the validation that names a bad value.

Settings come from flags and from a YAML file (`--config`) holding the same names without the leading
dashes (`cluster-name: a`); apiserver.main merges them, flags winning, into one mapping keyed by the flag's
destination (`cluster_name`), and build() turns that into a Config or raises ConfigError with a message that
names the setting and the bad value. The defaults live here and only here.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from apiserver import cluster_config, heartbeat
from apiserver import publisher as publisher_module
from clustermesh import http_server, identity, kube
from clustermesh.cli import etcd_options
from clustermesh.errors import ConfigError
from clustermesh.etcd import client as etcd_client

DEFAULT_GRPC_LISTEN = "127.0.0.1:9890"
DEFAULT_HEALTH_LISTEN = ":9880"
DEFAULT_METRICS_LISTEN = ":9962"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration setting: its flag, what it holds, its default (None: required) and its help."""

    flag: str
    help: str
    default: Any = None
    required: bool = False

    @property
    def dest(self) -> str:
        """The key under which the setting is merged (the flag without dashes, `_` for `-`)."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def name(self) -> str:
        """The key of the setting in a YAML config file."""
        return self.flag.removeprefix("--")


SETTINGS = (
    Setting("--cluster-name", "name of this cluster (reference §3: <= 32 chars, DNS label)", required=True),
    Setting("--cluster-id", "cluster ID, 1..max-connected-clusters", required=True),
    Setting("--max-connected-clusters", "255 or 511", default=int(identity.ClusterIDMode.DEFAULT)),
    Setting("--etcd-endpoints", "etcd client URLs, e.g. https://127.0.0.1:2379", required=True),
    Setting("--etcd-ca", "CA bundle to verify etcd"),
    Setting("--etcd-cert", "client certificate (CN admin-<cluster>)"),
    Setting("--etcd-key", "client private key"),
    Setting("--etcd-server-name", "TLS server name to expect"),
    Setting("--source", "manifests:DIR, kubernetes or kubernetes:KUBECONFIG", required=True),
    Setting("--grpc-listen", "gRPC address (HOST:PORT, port 0 picks one, empty disables)", DEFAULT_GRPC_LISTEN),
    Setting("--metrics-listen", "Prometheus /metrics address (empty disables)", DEFAULT_METRICS_LISTEN),
    Setting("--health-listen", "/readyz and /healthz address (empty disables)", DEFAULT_HEALTH_LISTEN),
    Setting("--heartbeat-interval", "seconds between heartbeat writes", heartbeat.DEFAULT_INTERVAL),
    Setting("--lease-ttl", "seconds every published key outlives a crashed apiserver", 900),
    Setting("--cluster-config-interval", "seconds between cluster-config checks", cluster_config.DEFAULT_INTERVAL),
    Setting("--identity-grace", "seconds an unused identity is kept before release", 900.0),
    Setting("--default-global-namespace", "whether namespaces without the annotation are global", True),
    Setting("--log-level", f"one of {', '.join(LOG_LEVELS)}", "info"),
)
SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated apiserver configuration."""

    publisher: publisher_module.Options
    etcd: etcd_client.EtcdConfig
    source: str
    grpc_listen: str = DEFAULT_GRPC_LISTEN
    metrics_listen: str = DEFAULT_METRICS_LISTEN
    health_listen: str = DEFAULT_HEALTH_LISTEN
    log_level: int = logging.INFO


def _integer(setting: Setting, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ConfigError(f"{setting.flag}: invalid integer {value!r}")


def _seconds(setting: Setting, value: Any) -> float:
    try:
        # YAML `true` is not a number of seconds, although Python would take it for 1.
        seconds = float("nan" if isinstance(value, bool) else value)
    except (TypeError, ValueError):
        raise ConfigError(f"{setting.flag}: invalid number of seconds {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{setting.flag}: must be a positive number of seconds, got {value!r}")
    return seconds


def _boolean(setting: Setting, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{setting.flag}: expected true or false, got {value!r}")


def _text(setting: Setting, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{setting.flag}: expected a string, got {value!r}")
    return value


def _optional_text(setting: Setting, value: Any) -> str | None:
    return None if value is None else _text(setting, value)


def _path(setting: Setting, value: Any) -> pathlib.Path | None:
    if value is None or isinstance(value, pathlib.Path):
        return value
    return pathlib.Path(_text(setting, value))


def _listen(setting: Setting, value: Any) -> str:
    address = _text(setting, value)
    if address:
        try:
            http_server.split_address(address)
        except ValueError:
            raise ConfigError(f"{setting.flag}: {address!r} is not HOST:PORT") from None
    return address


def build(values: Mapping[str, Any]) -> Config:
    """A Config from merged settings keyed by `Setting.dest` (None or absent: default); ConfigError if invalid."""

    def get(flag: str, convert: Callable[[Setting, Any], Any]) -> Any:
        setting = next(s for s in SETTINGS if s.flag == flag)
        value = values.get(setting.dest)
        if value is None:
            if setting.required:
                raise ConfigError(f"{flag} is required (as a flag or in --config)")
            value = setting.default
        return convert(setting, value)

    name = get("--cluster-name", _text)
    cluster_id = get("--cluster-id", _integer)
    max_clusters = get("--max-connected-clusters", _integer)
    identity.validate_max_connected_clusters(max_clusters)
    identity.validate_cluster(name, cluster_id, max_clusters)
    lease_ttl = get("--lease-ttl", _integer)
    if lease_ttl < 5:
        raise ConfigError(f"--lease-ttl: must be at least 5 seconds, got {lease_ttl}")
    source = get("--source", _text)
    kube.parse_source_spec(source, kinds=publisher_module.SOURCE_KINDS)
    level = get("--log-level", _text).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"--log-level: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    etcd_args = argparse.Namespace(
        etcd_endpoints=get("--etcd-endpoints", _text),
        etcd_ca=get("--etcd-ca", _path),
        etcd_cert=get("--etcd-cert", _path),
        etcd_key=get("--etcd-key", _path),
        etcd_server_name=get("--etcd-server-name", _optional_text),
    )
    return Config(
        publisher=publisher_module.Options(
            cluster=name,
            cluster_id=cluster_id,
            max_clusters=max_clusters,
            lease_ttl=lease_ttl,
            heartbeat_interval=get("--heartbeat-interval", _seconds),
            cluster_config_interval=get("--cluster-config-interval", _seconds),
            identity_grace=get("--identity-grace", _seconds),
            default_global_namespace=get("--default-global-namespace", _boolean),
        ),
        etcd=etcd_options.config_from_args(etcd_args),
        source=source,
        grpc_listen=get("--grpc-listen", _listen),
        metrics_listen=get("--metrics-listen", _listen),
        health_listen=get("--health-listen", _listen),
        log_level=logging.getLevelName(level.upper()),
    )
