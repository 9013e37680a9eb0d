"""One error hierarchy for the whole product.

Every error carries an HTTP status and an OpenAI error type/code, so the gateway's
middleware can render it as OpenAI-shaped JSON and the CLI can print it in one line.
"""

from __future__ import annotations

from typing import Any

import orjson


class FleetgateError(Exception):
    """Base error: `status` is the HTTP status, `type`/`code` follow OpenAI's error shape."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def to_dict(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }


class InvalidRequest(FleetgateError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ConfigError(InvalidRequest):
    """Bad settings: the message names the key and the value."""

    code = "invalid_config"


class AuthenticationFailed(FleetgateError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(FleetgateError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class NotFound(FleetgateError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(FleetgateError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(FleetgateError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(FleetgateError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class InsufficientQuota(FleetgateError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class InternalError(FleetgateError):
    """A bug or an unexpected failure inside the gateway (logged with its traceback)."""

    status = 500
    type = "server_error"
    code = "internal_error"


class UpstreamError(FleetgateError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class ServiceUnavailable(FleetgateError):
    status = 503
    type = "server_error"
    code = "no_healthy_endpoint"


class UpstreamTimeout(FleetgateError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"


def json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object, or raise InvalidRequest saying why."""
    if not raw:
        raise InvalidRequest("Request body is empty: expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"Request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return body
