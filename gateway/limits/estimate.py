"""Upper bounds of a request's prompt tokens, without a tokenizer, for budget reservations.

A reservation must never be smaller than what the request can cost, so this bound must hold
for any text and any model: byte-level BPE (GPT-2, Llama 3, Qwen) emits at most one token per
UTF-8 byte, SentencePiece with byte fallback and WordPiece at most one per character (hence
per byte), so the UTF-8 length of the text is a bound. Around it, chat templates add role
headers, a default system prompt, tool instructions and special tokens: a fixed allowance per
request, per message, per tool call and per prompt covers the templates in use. Bodies reach
this module validated (gateway/proxy/requests.py), so nothing here recurses into client data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Chat templates: a default system prompt (Llama 3's date header, Qwen's and SmolLM's persona
# lines are 20-30 tokens) and the generation prompt.
PRIMING_TOKENS = 64
# Per message: role header and end-of-turn markers (`<|start_header_id|>user<|end_header_id|>\n\n`,
# `<|im_start|>user\n … <|im_end|>\n`: 5-6 tokens), with room to spare.
PER_MESSAGE_TOKENS = 16
# Per tool call in an assistant message, around its JSON.
PER_TOOL_CALL_TOKENS = 32
# Templates that render tools add an instruction block (Qwen 2.5: ~150 tokens) around their JSON.
TOOLS_TOKENS = 512
# Completions and embeddings: BOS/EOS, CLS/SEP and similar special tokens per prompt.
PER_PROMPT_TOKENS = 8
# A non-text content part (image, audio, video): vision encoders emit up to ~16k tokens per
# image at full resolution (Qwen2-VL's default max_pixels).
NON_TEXT_PART_TOKENS = 16_384
# Fields some chat templates render into the prompt besides the messages.
TEMPLATE_FIELDS = ("tools", "functions", "documents", "chat_template_kwargs")


def text_bound(text: str) -> int:
    """At most one token per UTF-8 byte (`isascii` is O(1) in CPython)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _json_bound(value: Any) -> int:
    return len(orjson.dumps(value))


def _content_bound(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return text_bound(content)
    total = 0
    for part in content:  # validated: a list of part objects
        text = part.get("text") if isinstance(part, Mapping) else None
        if isinstance(text, str):
            total += text_bound(text)
        elif isinstance(part, str):
            total += text_bound(part)
        else:
            total += NON_TEXT_PART_TOKENS
    return total


def _message_bound(message: Mapping[str, Any]) -> int:
    content = message.get("content")
    total = PER_MESSAGE_TOKENS + (text_bound(content) if type(content) is str else _content_bound(content))
    role = message.get("role")
    if type(role) is str:
        total += text_bound(role)
    if len(message) <= 2 and role is not None and (content is not None or "content" in message):
        return total  # the usual {role, content}
    for key, value in message.items():
        if key in ("content", "role") or value is None:
            continue
        if key in ("name", "tool_call_id") and type(value) is str:
            total += text_bound(value)
        elif key == "tool_calls":
            total += PER_TOOL_CALL_TOKENS * (len(value) if type(value) is list else 1) + _json_bound(value)
        else:  # anything else a template may render (reasoning_content, function_call, ...)
            total += _json_bound(value)
    return total


def chat_prompt_bound(body: Mapping[str, Any]) -> int:
    """Upper bound of the prompt tokens of a validated chat body."""
    total = PRIMING_TOKENS + sum(_message_bound(m) for m in body["messages"])
    rendered = [body[name] for name in TEMPLATE_FIELDS if body.get(name)]
    if rendered:
        total += TOOLS_TOKENS + sum(_json_bound(value) for value in rendered)
    return total


def prompts_bound(prompts: list[str] | list[list[int]]) -> int:
    """Upper bound over a list of prompts (text, or token ids that count exactly)."""
    total = PER_PROMPT_TOKENS * len(prompts)
    for prompt in prompts:
        total += text_bound(prompt) if isinstance(prompt, str) else len(prompt)
    return total


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Upper bound of the prompt tokens of a chat (`messages`), completion (`prompt`) or embedding
    (`input`) body, in any script; see the module docstring for why it holds.

    The body should be validated first (gateway/proxy/requests.py); shapes it does not expect
    count as their JSON length, so this never recurses and never undercounts.
    """
    messages = body.get("messages")
    if isinstance(messages, list) and all(isinstance(m, Mapping) for m in messages):
        return chat_prompt_bound(body)
    for name in ("prompt", "input"):
        if name in body:
            value = body[name]
            if isinstance(value, str):
                return PER_PROMPT_TOKENS + text_bound(value)
            if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
                return PER_PROMPT_TOKENS + len(value)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return prompts_bound(value)
            if isinstance(value, list) and all(isinstance(v, list) and all(isinstance(t, int) for t in v)
                                               for v in value):
                return prompts_bound(value)
            return PER_PROMPT_TOKENS + _json_bound(value)
    return 0
