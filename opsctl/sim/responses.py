"""Response bodies and SSE chunks in vLLM's exact shapes, built from byte templates.

A stream's per-token chunk is a precomputed prefix + the JSON-encoded text + a suffix, so
streaming costs one small concatenation per token instead of a dict and a serialisation.
"""

from __future__ import annotations

import array
import base64
from typing import Any

import orjson

from opsctl.sim.protocol import EmbeddingJob, Generation
from opsctl.sim.tokens import embedding_vector

DONE = b"data: [DONE]\n\n"


def usage(n_prompt: int, n_completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": n_prompt,
        "total_tokens": n_prompt + n_completion,
        "completion_tokens": n_completion,
        "prompt_tokens_details": None,
    }


def chat_body(request_id: str, created: int, model: str, text: str, gen: Generation) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None, "tool_calls": []},
            "logprobs": None,
            "finish_reason": gen.finish_reason,
            "stop_reason": None,
        }],
        "usage": usage(gen.prompt_tokens, gen.completion_tokens),
    }


def completion_body(request_id: str, created: int, model: str, text: str, gen: Generation) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": gen.finish_reason,
            "stop_reason": None,
        }],
        "usage": usage(gen.prompt_tokens, gen.completion_tokens),
    }


def embedding_body(request_id: str, created: int, model: str, job: EmbeddingJob, dim: int) -> dict[str, Any]:
    data = []
    for i, item in enumerate(job.inputs):
        vector: Any = embedding_vector(item, dim)
        if job.base64:
            vector = base64.b64encode(array.array("f", vector).tobytes()).decode()
        data.append({"index": i, "object": "embedding", "embedding": vector})
    return {
        "id": request_id,
        "object": "list",
        "created": created,
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens,
                  "completion_tokens": 0, "prompt_tokens_details": None},
    }


def models_body(model: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": max_model_len,
            "permission": [],
        }],
    }


class ChunkFormat:
    """The SSE events of one streamed chat or text completion."""

    __slots__ = ("_head", "_token_pre", "_token_post", "_chat")

    def __init__(self, request_id: str, created: int, model: str, *, chat: bool) -> None:
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._chat = chat
        self._head = (
            b'data: {"id":' + orjson.dumps(request_id) + b',"object":"' + obj.encode()
            + b'","created":' + str(created).encode() + b',"model":' + orjson.dumps(model) + b',"choices":'
        )
        if chat:
            self._token_pre = self._head + b'[{"index":0,"delta":{"content":'
            self._token_post = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._token_pre = self._head + b'[{"index":0,"text":'
            self._token_post = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'

    def role(self) -> bytes:
        """The opening chat chunk (vLLM sends the role with empty content); empty for completions."""
        if not self._chat:
            return b""
        return self._head + (b'[{"index":0,"delta":{"role":"assistant","content":""},'
                             b'"logprobs":null,"finish_reason":null}]}\n\n')

    def token(self, piece: str) -> bytes:
        return self._token_pre + orjson.dumps(piece) + self._token_post

    def finish(self, reason: str) -> bytes:
        reason_json = orjson.dumps(reason)
        if self._chat:
            choice = b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":' + reason_json + b',"stop_reason":null}]'
        else:
            choice = (b'[{"index":0,"text":"","logprobs":null,"finish_reason":' + reason_json
                      + b',"stop_reason":null}]')
        return self._head + choice + b"}\n\n"

    def usage(self, n_prompt: int, n_completion: int) -> bytes:
        return self._head + b'[],"usage":' + orjson.dumps(usage(n_prompt, n_completion)) + b"}\n\n"
