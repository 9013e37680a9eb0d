"""`opsctl registry …`: models, endpoints and pricing per environment."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from opsctl.client import AdminClient, path_part
from opsctl.common import (
    ConfigOpt,
    GatewayOpt,
    Output,
    OutputOpt,
    TokenOpt,
    admin_client,
    decimal_text,
    fail,
    handle_errors,
    new_app,
    render,
)

registry_app = new_app("The model registry.")

EnvOpt = Annotated[str, typer.Option("--env", help="environment")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint", help="endpoint URL")]


def _rows(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for m in models:
        base = {"model": m["name"], "env": m["environment"], "status": m["status"],
                "in_$/1M": m["input_price"], "out_$/1M": m["output_price"], "max_tokens": m["max_tokens"],
                "fallbacks": m["fallbacks"]}
        if not m["endpoints"]:
            rows.append({**base, "endpoint": "", "release": "", "weight": "", "ep_status": "", "health": ""})
        for e in m["endpoints"]:
            rows.append({**base, "endpoint": e["url"], "release": e["release"], "weight": e["weight"],
                         "ep_status": e["status"], "health": e["last_health"]})
    return rows


@registry_app.command("list")
@handle_errors
def registry_list(env: Annotated[str | None, typer.Option("--env")] = None, output: OutputOpt = Output.table,
                  gateway: GatewayOpt = None, admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """List models and their endpoints."""
    with admin_client(gateway, admin_token, config) as client:
        models = client.get("/admin/v1/models", env=env)
    render(models if output is Output.json else _rows(models), output)


@registry_app.command("register")
@handle_errors
def registry_register(
    model: str,
    endpoint: EndpointOpt = None,
    env: EnvOpt = "production",
    release: Annotated[str, typer.Option("--release")] = "stable",
    weight: Annotated[int, typer.Option("--weight")] = 100,
    input_price: Annotated[float | None, typer.Option("--input-price", help="USD per 1M input tokens")] = None,
    output_price: Annotated[float | None, typer.Option("--output-price", help="USD per 1M output tokens")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="default max output tokens")] = None,
    fallback: Annotated[str | None, typer.Option("--fallback", help="comma-separated fallback models")] = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Register a model (created if new) and optionally one endpoint serving it."""
    if weight < 0:
        fail(f"--weight must be >= 0, got {weight}")
    for name, value in (("--input-price", input_price), ("--output-price", output_price)):
        if value is not None and not 0 <= value < float("inf"):  # also refuses NaN
            fail(f"{name} must be >= 0, got {decimal_text(value)}")
    if max_tokens is not None and max_tokens < 1:
        fail(f"--max-tokens must be a positive integer, got {max_tokens}")
    body: dict[str, Any] = {"name": model, "environment": env, "endpoint": endpoint, "release": release,
                            "weight": weight, "input_price": input_price, "output_price": output_price,
                            "max_tokens": max_tokens}
    if fallback is not None:
        body["fallbacks"] = [f.strip() for f in fallback.split(",") if f.strip()]
    with admin_client(gateway, admin_token, config) as client:
        result = client.post("/admin/v1/models", body)
    render(result if output is Output.json else _rows([result]), output)


def _endpoint_id(client: AdminClient, model: str, env: str, url: str) -> str:
    found = client.get(f"/admin/v1/models/{path_part(env)}/{path_part(model)}")
    for e in found["endpoints"]:
        if e["url"] == url.rstrip("/"):
            return e["id"]
    fail(f"model {model!r} in {env!r} has no endpoint {url!r}")
    raise AssertionError  # unreachable: fail raises


@registry_app.command("deregister")
@handle_errors
def registry_deregister(model: str, env: EnvOpt = "production", endpoint: EndpointOpt = None,
                        output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                        admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Remove one endpoint (--endpoint) or the whole model from an environment."""
    with admin_client(gateway, admin_token, config) as client:
        if endpoint:
            result = client.delete(f"/admin/v1/endpoints/{_endpoint_id(client, model, env, endpoint)}")
        else:
            result = client.delete(f"/admin/v1/models/{path_part(env)}/{path_part(model)}")
    render(result, output)


def _set_status(model: str, env: str, endpoint: str | None, model_status: str, endpoint_status: str,
                output: Output, gateway: str | None, admin_token: str | None, config: str | None) -> None:
    with admin_client(gateway, admin_token, config) as client:
        if endpoint:
            result = client.patch(f"/admin/v1/endpoints/{_endpoint_id(client, model, env, endpoint)}",
                                  {"status": endpoint_status})
        else:
            result = client.patch(f"/admin/v1/models/{path_part(env)}/{path_part(model)}",
                                  {"status": model_status})
    render(result, output)


@registry_app.command("enable")
@handle_errors
def registry_enable(model: str, env: EnvOpt = "production", endpoint: EndpointOpt = None,
                    output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                    admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Enable a model, or one endpoint with --endpoint."""
    _set_status(model, env, endpoint, "active", "ready", output, gateway, admin_token, config)


@registry_app.command("disable")
@handle_errors
def registry_disable(model: str, env: EnvOpt = "production", endpoint: EndpointOpt = None,
                     output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                     admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Disable a model, or one endpoint with --endpoint."""
    _set_status(model, env, endpoint, "disabled", "disabled", output, gateway, admin_token, config)


@registry_app.command("drain")
@handle_errors
def registry_drain(model: str, endpoint: Annotated[str, typer.Option("--endpoint", help="endpoint URL")],
                   env: EnvOpt = "production", output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                   admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Stop sending new requests to an endpoint (in-flight ones finish)."""
    _set_status(model, env, endpoint, "active", "draining", output, gateway, admin_token, config)
