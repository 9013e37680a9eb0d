"""The settings loader: precedence, coercion, and errors that name the bad key.

Precedence (lowest to highest): defaults < TOML file < FLEETGATE_* env < overrides (CLI flags).
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import Settings, load_settings

FIELD_TYPES = {f.name: str(f.type) for f in fields(Settings)}
INT_FIELDS = sorted(n for n, t in FIELD_TYPES.items() if t == "int")
FLOAT_FIELDS = sorted(n for n, t in FIELD_TYPES.items() if t == "float")


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleetgate.toml"
    path.write_text(text)
    return path


def _error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    return info.value.message


def test_defaults_without_file_or_env():
    s = load_settings(env={})
    assert (s.port, s.workers, s.host, s.usage_sink, s.access_log) == (8080, 1, "127.0.0.1", "spool", True)
    assert s.state_dir == Path(".fleetgate") and s.database_url == "sqlite:///.fleetgate/fleetgate.db"
    assert s.lake_url == f"file://{Path('.fleetgate').resolve() / 'lake'}"
    assert s.gateway_url is None and s.redis_url is None and s.metrics_token is None


def test_precedence_defaults_toml_env_overrides(tmp_path):
    path = _toml(tmp_path, "port = 9001\nworkers = 3\nlog_level = 'debug'\nhost = '0.0.0.0'\n")
    s = load_settings(path, env={})
    assert (s.port, s.workers, s.log_level, s.host, s.max_attempts) == (9001, 3, "debug", "0.0.0.0", 3)
    s = load_settings(path, env={"FLEETGATE_PORT": "9002", "FLEETGATE_WORKERS": "4"})
    assert (s.port, s.workers, s.log_level) == (9002, 4, "debug")  # env beats TOML, TOML beats defaults
    s = load_settings(path, env={"FLEETGATE_PORT": "9002"}, overrides={"port": 9003, "workers": None})
    assert (s.port, s.workers) == (9003, 3)  # a flag beats env; an unset flag (None) changes nothing


def test_default_file_in_the_working_directory_is_read(tmp_path):
    _toml(tmp_path, "port = 9100\n")  # the autouse fixture runs every test in tmp_path
    assert load_settings(env={}).port == 9100
    assert load_settings(env={"FLEETGATE_PORT": "9101"}).port == 9101


def test_fleetgate_table_form_and_dashes(tmp_path):
    path = _toml(tmp_path, "[fleetgate]\nport = 9200\nlog-level = 'warning'\n\n[other_tool]\nx = 1\n")
    s = load_settings(path, env={})
    assert (s.port, s.log_level) == (9200, "warning")


@pytest.mark.parametrize("raw, expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                           ("0", False), ("false", False), ("No", False), ("off", False)])
def test_bool_from_env(raw, expected):
    assert load_settings(env={"FLEETGATE_ACCESS_LOG": raw}).access_log is expected


def test_type_coercion_from_env_and_toml(tmp_path):
    env = {"FLEETGATE_PORT": "8123", "FLEETGATE_LAKE_FLUSH_S": "2.5", "FLEETGATE_STATE_DIR": str(tmp_path / "st"),
           "FLEETGATE_REDIS_URL": "", "FLEETGATE_METRICS_TOKEN": "m-token", "FLEETGATE_LAKE_WRITER_IN_GATEWAY": "yes"}
    s = load_settings(env=env)
    assert s.port == 8123 and s.lake_flush_s == 2.5 and s.state_dir == tmp_path / "st"
    assert s.redis_url is None  # empty env value = unset for an optional string
    assert s.metrics_token == "m-token" and s.lake_writer_in_gateway is True
    assert s.database_url == f"sqlite:///{tmp_path / 'st' / 'fleetgate.db'}"
    path = _toml(tmp_path, "port = '8124'\nworkers = 2.0\nlake_flush_s = 3\naccess_log = false\n")
    s = load_settings(path, env={})
    assert (s.port, s.workers, s.lake_flush_s, s.access_log) == (8124, 2, 3.0, False)
    assert isinstance(s.lake_flush_s, float)


@pytest.mark.parametrize("toml_line, key", [
    ("port = 'eighty'", "port"),
    ("port = true", "port"),
    ("port = inf", "port"),  # was an OverflowError traceback
    ("workers = 2.7", "workers"),  # was silently truncated to 2
    ("access_log = 'maybe'", "access_log"),
    ("lake_flush_s = 'soon'", "lake_flush_s"),
    ("lake_flush_s = true", "lake_flush_s"),
    ("state_dir = [1, 2]", "state_dir"),  # was Path('[1, 2]')
    ("state_dir = true", "state_dir"),
    ("host = [1]", "host"),
    ("metrics_token = {a = 1}", "metrics_token"),
])
def test_wrong_type_in_toml_names_the_key(tmp_path, toml_line, key):
    message = _error(config_file=_toml(tmp_path, toml_line + "\n"), env={})
    assert message.startswith(f"setting {key}=") and "invalid" in message


@pytest.mark.parametrize("name", INT_FIELDS)
def test_int_settings_refuse_garbage_naming_the_key(name):
    for raw in ("abc", "1.5", "", "nan"):
        assert f"setting {name}=" in _error(env={f"FLEETGATE_{name.upper()}": raw})


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_float_settings_refuse_nan_inf_and_negatives_naming_the_key(name):
    for raw in ("nan", "inf", "-inf", "-1", "abc"):
        assert name in _error(env={f"FLEETGATE_{name.upper()}": raw}), raw
    for value in (math.nan, math.inf):
        assert name in _error(env={}, overrides={name: value})


@pytest.mark.parametrize("name, value, fragment", [
    ("port", 70000, "port 0-65535"),
    ("port", -1, "port 0-65535"),
    ("workers", 0, "positive integer"),
    ("max_connections", 0, "positive integer"),
    ("upstream_max_connections_per_host", 0, "positive integer"),
    ("header_read_timeout_s", 0, "positive number"),
    ("body_read_timeout_s", 0, "positive number"),
    ("keepalive_timeout_s", 0, "positive number"),
    ("upstream_first_byte_timeout_s", 0, "positive number"),
    ("upstream_queue_timeout_s", 0, "positive number"),
    ("upstream_token_timeout_ms", -1, "non-negative"),
    ("auth_negative_ttl_s", 3600, "below 3600"),
    ("spool_fsync_ms", -1, "non-negative"),
    ("redis_timeout_ms", 0, "redis_timeout_ms"),
    ("log_format", "xml", "expected one of json, text"),
    ("log_level", "loud", "expected one of debug"),
    ("usage_sink", "kafka", "expected one of spool"),
    ("limits_outage_policy", "panic", "expected one of local"),
    ("database_url", "mysql://x", "expected sqlite:///PATH or postgresql"),
    ("lake_url", "/tmp/lake", "expected file:///DIR or s3://"),
    ("redis_url", "localhost:6379", "expected redis://"),
    ("gateway_url", "localhost:8080", "expected http(s)://"),
])
def test_range_and_choice_validation_names_the_key(name, value, fragment):
    message = _error(env={}, overrides={name: value})
    assert message.startswith("setting ") and name in message and fragment in message


def test_new_settings_accept_their_documented_range():
    s = load_settings(env={"FLEETGATE_LOG_FORMAT": "text", "FLEETGATE_ACCESS_LOG": "off",
                           "FLEETGATE_HEADER_READ_TIMEOUT_S": "0.5", "FLEETGATE_MAX_CONNECTIONS": "10",
                           "FLEETGATE_AUTH_NEGATIVE_TTL_S": "0", "FLEETGATE_UPSTREAM_TOKEN_TIMEOUT_MS": "0",
                           "FLEETGATE_GATEWAY_URL": "https://gw.example:8443"})
    assert (s.log_format, s.access_log, s.header_read_timeout_s, s.max_connections) == ("text", False, 0.5, 10)
    assert s.auth_negative_ttl_s == 0 and s.upstream_token_timeout_ms == 0
    assert s.gateway_url == "https://gw.example:8443"


def test_unknown_toml_key_is_refused_with_file_and_key(tmp_path):
    path = _toml(tmp_path, "colour = 'blue'\n")
    message = _error(config_file=path, env={})
    assert "'colour'" in message and str(path) in message and "unknown" in message
    assert "'colour'" in _error(config_file=_toml(tmp_path, "[fleetgate]\ncolour = 1\n"), env={})


def test_unknown_override_is_refused():
    assert "'colour'" in _error(env={}, overrides={"colour": "blue"})


def test_unknown_fleetgate_env_is_ignored():
    s = load_settings(env={"FLEETGATE_REQUIRE_SERVICES": "1", "FLEETGATE_COLOUR": "blue", "PORT": "1"})
    assert s.port == 8080


def test_missing_and_broken_files(tmp_path):
    assert "does not exist" in _error(config_file=tmp_path / "missing.toml", env={})
    assert "not valid TOML" in _error(config_file=_toml(tmp_path, "port = = 1\n"), env={})


def test_public_dict_hides_secrets():
    s = load_settings(env={"FLEETGATE_ADMIN_TOKEN": "fg-admin-secret", "FLEETGATE_METRICS_TOKEN": "m-secret",
                           "FLEETGATE_S3_SECRET_KEY": "s3-secret"})
    public = s.public_dict()
    assert public["admin_token"] == public["metrics_token"] == public["s3_secret_key"] == "***"
    assert not any(v in repr(public) for v in ("fg-admin-secret", "m-secret", "s3-secret"))
    assert public["state_dir"] == ".fleetgate"
