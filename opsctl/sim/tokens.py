"""Deterministic token accounting for the simulator, so tests elsewhere can predict usage.

Rules (all integer arithmetic). `text_tokens(s) = ceil(ascii / 4) + non_ascii_bytes`, where
`ascii` counts the ASCII characters of s and `non_ascii_bytes` is the UTF-8 length of all the
others: a byte-level BPE's worst case, so CJK, emoji and accents are never cheaper than real.

* chat prompt tokens = 3 + sum over messages of (4 + text_tokens(content)); content is the
  string, or the concatenated `text` of its `{"type": "text"}` parts (other parts count 0);
* completion prompt tokens = text_tokens(prompt), or len(prompt) for a list of token ids;
  several prompts (a list of strings or of token-id lists) add up;
* embedding prompt tokens = the sum of the above over every input;
* natural completion length of a prompt = 16 + prompt_tokens % 16 (so 16..31 tokens);
* completion tokens of one sequence = min(natural, max_tokens or max_completion_tokens,
  max_model_len - prompt_tokens); with `ignore_eos: true` and a max_tokens, exactly max_tokens
  (capped by the context). finish_reason is "length" when the cap cut the answer short, else "stop";
* `n` returns n choices per prompt, all of that length; `best_of` (default n, >= n) generates
  best_of sequences per prompt and returns n. usage.completion_tokens counts every generated
  sequence: prompts x best_of x length (vLLM's old best_of engine billed only the n returned;
  counting what the GPU produced is the conservative choice, and with best_of = n it is the same);
* the generated text of n tokens is "token0 token1 ... token{n-1}"; token k's delta in a
  stream is "token0" for k = 0 and " token{k}" after.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

CHAT_PRIMING_TOKENS = 3
PER_MESSAGE_TOKENS = 4
NATURAL_BASE_TOKENS = 16


_ASCII = bytes(range(128))


def text_tokens(text: str) -> int:
    """Tokens in a piece of text: ceil(ASCII characters / 4) + UTF-8 bytes of the other characters."""
    if text.isascii():
        return (len(text) + 3) // 4
    raw = text.encode("utf-8", "surrogatepass")
    non_ascii = len(raw.translate(None, _ASCII))
    return (len(raw) - non_ascii + 3) // 4 + non_ascii


def message_text(content: Any) -> str:
    """The text of a chat message's content (a string, None, or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"
    )


def chat_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request's `messages`."""
    total = CHAT_PRIMING_TOKENS
    for message in messages:
        total += PER_MESSAGE_TOKENS + text_tokens(message_text(message.get("content")))
    return total


def prompt_tokens(prompt: str | Sequence[int]) -> int:
    """Prompt tokens of one completion prompt or embedding input (text or token ids)."""
    if isinstance(prompt, str):
        return text_tokens(prompt)
    return len(prompt)


def prompt_list(value: Any) -> list[str | Sequence[int]]:
    """The prompts of a completion `prompt` / embedding `input`: one text or token-id list, or a list of them."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]
    return list(value)


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens the simulator reports for a (valid) request body of any endpoint.

    Args:
        body: a chat (`messages`), completion (`prompt`) or embedding (`input`) request.

    Raises:
        KeyError: the body has none of those fields.
    """
    if "messages" in body:
        return chat_prompt_tokens(body["messages"])
    key = "prompt" if "prompt" in body else "input"
    return sum(prompt_tokens(item) for item in prompt_list(body[key]))


def natural_completion_tokens(n_prompt: int) -> int:
    """How long the answer is when nothing caps it."""
    return NATURAL_BASE_TOKENS + n_prompt % NATURAL_BASE_TOKENS


def plan_completion(
    n_prompt: int, max_tokens: int | None, *, max_model_len: int, ignore_eos: bool = False
) -> tuple[int, str]:
    """Completion tokens and finish_reason for a prompt of `n_prompt` tokens.

    Returns:
        (completion_tokens, finish_reason) with finish_reason "stop" or "length".
    """
    natural = natural_completion_tokens(n_prompt)
    if ignore_eos and max_tokens is not None:
        natural = max_tokens
    cap = max_model_len - n_prompt
    if max_tokens is not None:
        cap = min(cap, max_tokens)
    if natural <= cap:
        return natural, "stop"
    return cap, "length"


def count_completion_tokens(body: Mapping[str, Any], *, max_model_len: int = 8192) -> tuple[int, str]:
    """usage.completion_tokens and finish_reason the simulator produces for a (valid) chat or completion body.

    Returns:
        (completion tokens over every generated sequence, "length" if any was cut short else "stop").
    """
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    ignore_eos = bool(body.get("ignore_eos"))
    if "messages" in body:
        prompts = [chat_prompt_tokens(body["messages"])]
    else:
        prompts = [prompt_tokens(p) for p in prompt_list(body["prompt"])]
    sequences = body.get("best_of") or body.get("n") or 1
    total, reason = 0, "stop"
    for n_prompt in prompts:
        tokens, finish = plan_completion(n_prompt, max_tokens, max_model_len=max_model_len, ignore_eos=ignore_eos)
        total += tokens * sequences
        if finish == "length":
            reason = "length"
    return total, reason


class TokenText:
    """The deterministic words the simulator "generates", precomputed once per app."""

    __slots__ = ("pieces",)

    def __init__(self, max_tokens: int) -> None:
        self.pieces: tuple[str, ...] = tuple(f"token{k}" if k == 0 else f" token{k}" for k in range(max_tokens))

    def text(self, n: int) -> str:
        """The full text of an n-token answer."""
        return "".join(self.pieces[:n])


def embedding_vector(item: str | Sequence[int], dim: int) -> list[float]:
    """A unit-length vector derived from the input's bytes: same input, same vector."""
    raw = item.encode() if isinstance(item, str) else ",".join(map(str, item)).encode()
    values = [(b - 127.5) / 127.5 for b in hashlib.shake_128(raw).digest(dim)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
