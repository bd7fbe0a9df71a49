"""The command line, in process: flags and the YAML config file → Config, and one-line errors with exit 2.

Covers: a full flag set, the config file supplying what flags do not (flags win), defaults, and each kind of
invalid input naming the bad value. Excludes: running the daemon (test_daemon.py, which also checks the exit
status of the real process).
"""

from __future__ import annotations

import logging
import pathlib

import pytest

from apiserver import config, main
from clustermesh.errors import ConfigError


@pytest.fixture
def base(tmp_path, certs_dir) -> list[str]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    files = certs_dir.admin
    return [
        "--cluster-name", "cluster-a", "--cluster-id", "3",
        "--etcd-endpoints", "https://127.0.0.1:2379", "--etcd-ca", str(files.ca),
        "--etcd-cert", str(files.cert), "--etcd-key", str(files.key),
        "--source", f"manifests:{manifests}",
    ]


def test_flags_and_defaults(base) -> None:
    settings = main.parse([*base, "--max-connected-clusters", "511", "--heartbeat-interval", "2.5"])
    assert settings.publisher.cluster == "cluster-a"
    assert settings.publisher.cluster_id == 3
    assert settings.publisher.max_clusters == 511
    assert settings.publisher.heartbeat_interval == 2.5
    assert settings.publisher.lease_ttl == 900 and settings.publisher.default_global_namespace is True
    assert settings.etcd.endpoints == ("https://127.0.0.1:2379",)
    assert settings.grpc_listen == config.DEFAULT_GRPC_LISTEN
    assert settings.health_listen == ":9880" and settings.metrics_listen == ":9962"
    assert settings.log_level == logging.INFO


def test_config_file_fills_in_and_flags_win(base, tmp_path) -> None:
    file = tmp_path / "apiserver.yaml"
    file.write_text(
        "cluster-name: from-file\n"
        "cluster-id: 7\n"
        "lease-ttl: 120\n"
        "default-global-namespace: false\n"
        "health-listen: 127.0.0.1:0\n"
        "log-level: debug\n"
    )
    settings = main.parse(["--config", str(file), *base])
    assert settings.publisher.cluster == "cluster-a" and settings.publisher.cluster_id == 3
    assert settings.publisher.lease_ttl == 120
    assert settings.publisher.default_global_namespace is False
    assert settings.health_listen == "127.0.0.1:0"
    assert settings.log_level == logging.DEBUG
    only_file = tmp_path / "only.yaml"
    only_file.write_text("\n".join(f"{flag[2:]}: {value}" for flag, value in zip(base[::2], base[1::2], strict=True)))
    assert main.parse(["--config", str(only_file)]).publisher.cluster == "cluster-a"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--cluster-id", "0"], "ClusterID 0 is reserved"),
        (["--cluster-id", "256"], "ClusterID > 255 is not supported"),
        (["--cluster-id", "three"], "--cluster-id: invalid integer 'three'"),
        (["--cluster-name", "Bad_Name"], "invalid cluster name 'Bad_Name'"),
        (["--cluster-name", "default"], "cannot use the default cluster name"),
        (["--max-connected-clusters", "300"], "--max-connected-clusters=300 is invalid"),
        (["--source", "nowhere:x"], "invalid source 'nowhere:x'"),
        (["--source", "manifests:/does/not/exist"], "/does/not/exist is not a directory"),
        (["--etcd-endpoints", "127.0.0.1:2379"], "--etcd-endpoints: '127.0.0.1:2379' is not"),
        (["--heartbeat-interval", "-1"], "--heartbeat-interval: must be a positive number of seconds"),
        (["--lease-ttl", "1"], "--lease-ttl: must be at least 5 seconds"),
        (["--health-listen", "localhost"], "--health-listen: 'localhost' is not HOST:PORT"),
        (["--default-global-namespace", "maybe"], "--default-global-namespace: expected true or false"),
        (["--log-level", "loud"], "--log-level: expected one of"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_invalid_input_is_one_line_naming_the_value(base, capsys, change, message) -> None:
    assert main.main([*base, *change]) == main.EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("clustermesh-apiserver: error: ") and message in lines[0], err


def test_missing_required_setting(base) -> None:
    with pytest.raises(ConfigError, match="--cluster-name is required"):
        main.parse(base[2:])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("cluster-nme: a\n", "unknown setting 'cluster-nme'"),
        ("- a\n", "must hold a mapping"),
        ("cluster-name: [\n", "is not valid YAML"),
    ],
)
def test_invalid_config_file(base, tmp_path, content, message) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        main.parse(["--config", str(file), *base])


def test_unreadable_config_file(base) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        main.parse(["--config", str(pathlib.Path("/does/not/exist.yaml")), *base])
