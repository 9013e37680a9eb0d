"""Pricing: exact micro-USD costs that never under-charge, and prompt estimates that never under-reserve."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.errors import InvalidRequest
from gateway.limits.estimate import estimate_prompt_tokens
from gateway.limits.pricing import cost_micros
from opsctl.sim.tokens import count_prompt_tokens


@pytest.mark.parametrize(
    ("prompt", "completion", "in_price", "out_price", "expected"),
    [
        (1_000, 500, 0.15, 0.60, 450),  # 150 + 300
        (1_000, 0, 1.1, 0, 1_100),  # 1.1 * 1000 is 1100.0000000000002 in floats: no spurious +1
        (3, 0, 0.1, 0, 1),  # 0.3 micro-USD rounds up to 1
        (1, 1, 0.2, 0.3, 1),  # 0.5 rounds up once for the request, not per side
        (0, 0, 30, 60, 0),
        (10**9, 10**9, "2.5", Decimal("10"), 12_500_000_000),
        (7, 3, 1, 2, 13),
    ],
)
def test_cost_is_exact_and_rounds_up_once(prompt, completion, in_price, out_price, expected):
    assert cost_micros(prompt, completion, in_price, out_price) == expected


@pytest.mark.parametrize(
    "args",
    [(-1, 0, 1, 1), (0, -1, 1, 1), (1.5, 0, 1, 1), (1, 1, -0.1, 1), (1, 1, 1, "cheap"), (1, 1, True, 1)],
)
def test_bad_pricing_input_is_refused(args):
    with pytest.raises(InvalidRequest):
        cost_micros(*args)


BODIES = [
    {"messages": [{"role": "user", "content": "Hello there"}]},
    {"messages": [{"role": "system", "content": "x" * 4_001}, {"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "text", "text": "de"}]}]},
    {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "ok" * 99}]},
    {"prompt": "Once upon a time"},
    {"prompt": ["a" * 17]},
    {"prompt": [1, 2, 3, 4, 5]},
    {"input": ["first text", "second, longer text"]},
    {"input": [[1, 2], [3, 4, 5]]},
]


@pytest.mark.parametrize("body", BODIES)
def test_estimate_is_never_below_the_simulator_count(body):
    assert estimate_prompt_tokens(body) >= count_prompt_tokens(body)


def test_estimate_counts_what_a_model_reads():
    plain = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert estimate_prompt_tokens(plain) == 64 + 16 + len("user") + 400  # priming, message, role, one per byte
    with_image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}
    assert estimate_prompt_tokens(with_image) >= 16_384
    with_tools = {**plain, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"x": "y" * 400}}}]}
    assert estimate_prompt_tokens(with_tools) > estimate_prompt_tokens(plain) + 900
    call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "a" * 40}}]}
    assert estimate_prompt_tokens({"messages": [call]}) > 64 + 16 + 32 + 40


@pytest.mark.parametrize("body", [{}, {"messages": "not a list"}, {"prompt": None}, {"input": 42}])
def test_estimate_of_odd_bodies_never_raises(body):
    assert 0 <= estimate_prompt_tokens(body) <= 16
