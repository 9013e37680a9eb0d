"""The access log writer and the JSON log formatter: fields, batching, flush, hostile values."""

from __future__ import annotations

import asyncio
import logging
import os
import re

import orjson
import pytest

from gateway.observability.access_log import MAX_VALUE_CHARS, AccessLog
from gateway.observability.logging import JsonFormatter, setup_logging
from gateway.settings import Settings

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def pipe():
    """A real pipe: the log writes to the write end, the test reads the other without blocking."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            continue


def read_available(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def test_json_line_has_the_contract_fields_and_only_known_dataplane_fields(pipe):
    r, w = pipe
    log = AccessLog(fd=w)
    extra = {"org_id": "org_1", "key_id": "key_1", "model": "m", "endpoint": "http://pod:8000",
             "upstream_ms": 12.5, "error_code": None, "authorization": "Bearer sk-fg-secret", "body": "{...}"}
    log.write("rid-1", "POST", "/v1/chat/completions", 200, 13.25, extra)
    entry = orjson.loads(read_available(r))
    assert ISO_UTC.match(entry.pop("time"))
    assert entry == {"request_id": "rid-1", "method": "POST", "path": "/v1/chat/completions", "status": 200,
                     "latency_ms": 13.25, "org_id": "org_1", "key_id": "key_1", "model": "m",
                     "endpoint": "http://pod:8000", "upstream_ms": 12.5}


def test_error_code_from_the_edge_unless_the_data_plane_named_one(pipe):
    r, w = pipe
    log = AccessLog(fd=w)
    log.write("a", "GET", "/x", 404, 0.1, None, "not_found")
    log.write("b", "POST", "/v1/chat/completions", 429, 0.1, {"error_code": "insufficient_quota"}, "rate_limit")
    lines = [orjson.loads(line) for line in read_available(r).splitlines()]
    assert [line["error_code"] for line in lines] == ["not_found", "insufficient_quota"]


async def test_lines_of_one_loop_tick_are_written_together_and_close_flushes(pipe):
    r, w = pipe
    log = AccessLog(fd=w)
    for i in range(50):
        log.write(f"r{i}", "GET", "/v1/status/healthz", 200, 0.05)
    assert read_available(r) == b""  # buffered until the loop runs its callbacks
    await asyncio.sleep(0)
    assert len(read_available(r).splitlines()) == 50
    log.write("last", "GET", "/v1/status/healthz", 200, 0.05)
    log.close()  # shutdown: what is buffered is written before the process ends
    assert orjson.loads(read_available(r))["request_id"] == "last"
    log.write("straggler", "GET", "/", 200, 0.0)  # after close: written at once
    assert orjson.loads(read_available(r))["request_id"] == "straggler"


def test_hostile_values_stay_on_one_line_and_bounded(pipe):
    r, w = pipe
    for fmt in ("json", "text"):
        log = AccessLog(fd=w, fmt=fmt)
        log.write("rid", "GET", "/p" + "a" * 5000, 404, 1.0, {"model": 'evil"\n2026-01-01 GET / 200 x'})
        data = read_available(r)
        assert data.count(b"\n") == 1, data
        assert len(data) < 2 * MAX_VALUE_CHARS + 300


def test_text_format(pipe):
    r, w = pipe
    log = AccessLog(fd=w, fmt="text")
    log.write("rid-9", "POST", "/v1/embeddings", 200, 3.5, {"org_id": "org_1", "model": "my model"})
    line = read_available(r).decode()
    assert re.match(r"^\S+Z POST /v1/embeddings 200 3\.5ms request_id=rid-9 org_id=org_1 "
                    r'model="my model"\n$', line), line


def test_a_broken_log_pipe_drops_lines_without_failing(pipe, caplog):
    r, w = pipe
    log = AccessLog(fd=w)
    os.close(r)  # nobody reads: writes get EPIPE
    log.write("a", "GET", "/", 200, 0.1)
    log.write("b", "GET", "/", 200, 0.1)
    assert log.dropped == 2
    assert sum("access log: cannot write" in m for m in caplog.messages) == 1


def test_json_formatter_for_the_rest_of_logging():
    formatter = JsonFormatter(worker=1)
    try:
        raise ValueError("broken")
    except ValueError as e:
        exc_info = (type(e), e, e.__traceback__)
        record = logging.LogRecord("gateway.x", logging.ERROR, __file__, 1, "failed %s", ("thing",), exc_info)
    entry = orjson.loads(formatter.format(record))
    assert ISO_UTC.match(entry["time"])
    assert entry["level"] == "error" and entry["logger"] == "gateway.x" and entry["message"] == "failed thing"
    assert entry["worker"] == 1
    assert "Traceback" in entry["exc"] and "ValueError: broken" in entry["exc"]


def test_setup_logging_honours_log_format_and_level(capfd):
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging(Settings(log_format="json", log_level="warning"))
        logging.getLogger("gateway.test").info("hidden")
        logging.getLogger("gateway.test").warning("shown %d", 1)
        lines = capfd.readouterr().err.splitlines()
        assert [orjson.loads(line)["message"] for line in lines] == ["shown 1"]
        setup_logging(Settings(log_format="text", log_level="info"), worker=3)
        logging.getLogger("gateway.test").info("plain")
        assert re.search(r" w3 INFO gateway\.test: plain$", capfd.readouterr().err.strip())
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
