"""Request cost in exact integer micro-USD, rounded up once per request.

A reservation must never be smaller than what the request can cost, so the cost rounds up;
the prompt-token bound it is computed from lives in gateway/limits/estimate.py.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal
from fractions import Fraction

from gateway.errors import InvalidRequest

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
