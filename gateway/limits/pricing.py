"""Request cost in exact integer micro-USD, and a cheap prompt-token estimate for reservations.

A reservation must never be smaller than what the request can cost, so the cost rounds up
and the estimate errs high (it must stay >= the simulator's and vLLM's real counts for text).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from gateway.errors import InvalidRequest

# Estimate: ceil(chars / 4) per message plus PER_MESSAGE_TOKENS, plus PRIMING_TOKENS per request.
# The simulator counts 3 + sum(4 + ceil(len(text) / 4)); real tokenizers average ~4 chars/token
# for English. Non-text parts (images, audio) are charged IMAGE_PART_TOKENS each.
PER_MESSAGE_TOKENS = 8
PRIMING_TOKENS = 8
IMAGE_PART_TOKENS = 1_000


@functools.lru_cache(maxsize=4096, typed=True)
def _price(name: str, value: float | int | str | Decimal) -> Fraction:
    """Parse a price once: a registry has few distinct prices, and this runs twice per request."""
    return _parse_price(name, value)


def _parse_price(name: str, value: float | int | str | Decimal) -> Fraction:
    if isinstance(value, bool):
        raise InvalidRequest(f"{name}={value!r} is invalid: expected a price in USD per 1M tokens")
    try:
        # Via str(): a float price of 0.15 means exactly 0.15, not its binary approximation.
        price = Fraction(Decimal(str(value)))
    except (ArithmeticError, ValueError) as e:
        raise InvalidRequest(f"{name}={value!r} is invalid: expected a price in USD per 1M tokens") from e
    if price < 0:
        raise InvalidRequest(f"{name}={value!r} is invalid: a price cannot be negative")
    return price


def cost_micros(
    prompt_tokens: int,
    completion_tokens: int,
    input_price_per_1m: float | int | str | Decimal,
    output_price_per_1m: float | int | str | Decimal,
) -> int:
    """A request's cost in micro-USD, exact and rounded up once for the whole request.

    A price in USD per 1M tokens is numerically the price in micro-USD per token, so
    cost = ceil(prompt_tokens * input_price + completion_tokens * output_price).

    Raises:
        InvalidRequest: negative token counts or prices, or a price that is not a number.
    """
    for name, count in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens)):
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidRequest(f"{name}={count!r} is invalid: expected an integer >= 0")
    a, b, d = _scaled(input_price_per_1m, output_price_per_1m)
    return -(-(prompt_tokens * a + completion_tokens * b) // d)  # exact ceil in integers


@functools.lru_cache(maxsize=4096, typed=True)
def _scaled(input_price: float | int | str | Decimal, output_price: float | int | str | Decimal) -> tuple[int, int, int]:
    """Both prices over one common denominator d: cost = ceil((p*a + c*b) / d), all integers."""
    pin = _price("input_price", input_price)
    pout = _price("output_price", output_price)
    d = math.lcm(pin.denominator, pout.denominator)
    return pin.numerator * (d // pin.denominator), pout.numerator * (d // pout.denominator), d


def _text_tokens(chars: int) -> int:
    return (chars + 3) // 4


def _content_chars(content: Any) -> tuple[int, int]:
    """(characters of text, number of non-text parts) in a message's content."""
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return len(content), 0
    chars = parts = 0
    if isinstance(content, Sequence):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                chars += len(part["text"])
            elif isinstance(part, str):
                chars += len(part)
            else:
                parts += 1
    return chars, parts


def _message_tokens(message: Any) -> int:
    if not isinstance(message, Mapping):
        return PER_MESSAGE_TOKENS
    chars, parts = _content_chars(message.get("content"))
    name = message.get("name")
    if isinstance(name, str):
        chars += len(name)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            chars += sum(len(v) for v in (function.get("name"), function.get("arguments")) if isinstance(v, str))
    return PER_MESSAGE_TOKENS + _text_tokens(chars) + parts * IMAGE_PART_TOKENS


def _prompt_tokens(value: Any) -> int:
    """Text -> ceil(chars/4); token ids -> their count; a list of either -> the sum."""
    if isinstance(value, str):
        return _text_tokens(len(value))
    if isinstance(value, Sequence) and value:
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(_prompt_tokens(v) for v in value)
    return 0


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """An upper-leaning estimate of a request's prompt tokens, without a tokenizer (~1 µs/KB).

    Chat (`messages`): PRIMING_TOKENS + per message (PER_MESSAGE_TOKENS + ceil(chars/4)), counting
    content text, `name` and tool-call arguments; tool definitions count ceil(len(json)/4).
    Completions (`prompt`) and embeddings (`input`): ceil(chars/4) per text, or the number of
    token ids. Never below the simulator's count for the same body.
    """
    messages = body.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        total = PRIMING_TOKENS + sum(_message_tokens(m) for m in messages)
        tools = body.get("tools") or body.get("functions")
        if tools:
            total += _text_tokens(len(repr(tools)))
        return total
    for field in ("prompt", "input"):
        if field in body:
            return _prompt_tokens(body[field])
    return 0
