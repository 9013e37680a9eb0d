"""Inference request validation: every parameter checked before anything is reserved, and the
request's maximum output fixed exactly as a vLLM server would honour it."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.limits.estimate import estimate_prompt_tokens, text_bound
from gateway.proxy.billing import MISSING, NEGATIVE, NOT_INTEGER, OVER_CAP, bill, bill_partial
from gateway.proxy.requests import MAX_SEQUENCES, parse_request, validate
from opsctl.sim.tokens import count_prompt_tokens

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chat(**extra):
    return validate({**CHAT, **extra}, "chat", default_max_tokens=256, model_name="m")


def completion(**extra):
    return validate({"model": "m", "prompt": "hi", **extra}, "completions", default_max_tokens=256, model_name="m")


def nested(depth: int, leaf: object = "x") -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# --- the output cap and the sequences -------------------------------------------------------------

def test_max_completion_tokens_wins_and_both_caps_are_forwarded_equal():
    req = chat(max_tokens=1, max_completion_tokens=8000, ignore_eos=True)
    assert req.output_cap == 8000 and req.max_output_tokens == 8000
    sent = orjson.loads(req.payload("served-name"))
    assert sent["max_tokens"] == sent["max_completion_tokens"] == 8000
    assert sent["model"] == "served-name"


def test_the_model_default_is_forwarded_when_the_client_sends_no_cap():
    req = chat()
    assert req.output_cap == 256
    assert orjson.loads(req.payload("m"))["max_tokens"] == 256
    assert "max_completion_tokens" not in orjson.loads(req.payload("m"))


def test_n_multiplies_the_output():
    assert chat(n=4, max_tokens=10).max_output_tokens == 40


def test_several_prompts_times_best_of():
    req = completion(prompt=["a", "b", "c"], n=2, best_of=3, max_tokens=5)
    assert req.sequences == 9 and req.max_output_tokens == 45


def test_token_id_prompts():
    assert completion(prompt=[1, 2, 3]).sequences == 1
    assert completion(prompt=[[1, 2], [3]]).sequences == 2


def test_streams_ask_upstream_for_usage():
    req = chat(stream=True)
    assert orjson.loads(req.payload("m"))["stream_options"] == {"include_usage": True}
    assert req.wants_usage is False
    assert chat(stream=True, stream_options={"include_usage": True}).wants_usage is True


def test_embeddings_reserve_no_output_and_bound_every_input():
    req = validate({"model": "e", "input": ["héllo", "世界"]}, "embeddings", default_max_tokens=256, model_name="e")
    assert req.max_output_tokens == 0
    assert req.prompt_bound >= len("héllo".encode()) + len("世界".encode())


# --- the prompt bound ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "plain English text, nothing special",
    "日本語のテキストはトークンが多い" * 20,
    "😀🎉🔥" * 50,
    "def f(x):\n    return {k: v for k, v in x.items() if v}\n" * 10,
    "x" * 1000,
    "Ω≈ç√∫˜µ≤≥÷ ñ ü ß 中文 한국어 العربية",
])
def test_the_bound_holds_for_any_text(text):
    body = {"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}
    bound = estimate_prompt_tokens(body)
    assert bound >= len(text.encode()) + len(b"be brief")  # one token per byte at worst
    assert bound >= count_prompt_tokens(body)  # the simulator counts like a tokenizer would
    assert text_bound(text) == len(text.encode())


def test_template_fields_and_tool_calls_count():
    plain = chat()
    with_tools = chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert with_tools.prompt_bound > plain.prompt_bound + 500
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}" * 100}}]}
    assert validate({"model": "m", "messages": [call]}, "chat", default_max_tokens=1,
                    model_name="m").prompt_bound > 200


def test_non_text_parts_count_a_whole_image():
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:..."}}]}]}
    assert validate(body, "chat", default_max_tokens=1, model_name="m").prompt_bound > 16_000


# --- refused shapes: a 400 naming the parameter, never an exception of another kind --------------

BAD_CHAT = [
    ({"stream_options": "x"}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"stream": "true"}, "stream"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": 5}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "user", "content": nested(300)}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": nested(300)}]}]}, "messages[0].content"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**30}, "max_tokens"),
    ({"max_completion_tokens": True}, "max_completion_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"n": MAX_SEQUENCES + 1}, "n"),
    ({"temperature": 3}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"seed": 2**64}, "seed"),
    ({"seed": "1"}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a"] * 100}, "stop"),
    ({"logprobs": 5}, "logprobs"),
    ({"top_logprobs": 99}, "top_logprobs"),
    ({"logit_bias": {"1": 500}}, "logit_bias"),
    ({"logit_bias": []}, "logit_bias"),
    ({"user": 42}, "user"),
    ({"tools": "none"}, "tools"),
    ({"tool_choice": 3}, "tool_choice"),
    ({"response_format": "json"}, "response_format"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"min_tokens": 300}, "min_tokens"),
    ({"chat_template": "{% for i in range(100000) %}x{% endfor %}"}, "chat_template"),
    ({"metadata": nested(300, {})}, None),  # an unknown field too deep to forward
]


@pytest.mark.parametrize(("extra", "param"), BAD_CHAT)
def test_bad_chat_bodies_are_400s_naming_the_parameter(extra, param):
    with pytest.raises(InvalidRequest) as e:
        chat(**extra)
    assert e.value.status == 400
    assert e.value.param == param


BAD_COMPLETIONS = [
    ({"prompt": nested(400)}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": [[1], []]}, "prompt"),
    ({"prompt": ["a"] * 5000}, "prompt"),
    ({"best_of": 1, "n": 2}, "best_of"),
    ({"logprobs": True}, "logprobs"),
    ({"echo": "no"}, "echo"),
]


@pytest.mark.parametrize(("extra", "param"), BAD_COMPLETIONS)
def test_bad_completion_bodies_are_400s(extra, param):
    with pytest.raises(InvalidRequest) as e:
        completion(**extra)
    assert e.value.param == param


@pytest.mark.parametrize("raw", [b"", b"[]", b"nul", b'{"model": 5}', b'{"model": ""}',
                                 b'{"model": "' + b"m" * 300 + b'"}'])
def test_unparseable_bodies(raw):
    with pytest.raises(InvalidRequest):
        parse_request(raw, "chat")


def test_embedding_input_shapes():
    for bad in ({"input": 5}, {"input": [[1], "a"]}, {"input": []}, {"input": "x", "encoding_format": "hex"},
                {"input": "x", "dimensions": 0}):
        with pytest.raises(InvalidRequest):
            validate({"model": "e", **bad}, "embeddings", default_max_tokens=1, model_name="e")


# --- billing: a pod's usage report is checked ---------------------------------------------------

@pytest.mark.parametrize(("usage", "reason"), [
    (None, MISSING),
    ("lots", MISSING),
    ({"prompt_tokens": 3}, MISSING),
    ({"prompt_tokens": 3, "completion_tokens": "12"}, NOT_INTEGER),
    ({"prompt_tokens": 3, "completion_tokens": 12.5}, NOT_INTEGER),
    ({"prompt_tokens": 3, "completion_tokens": [1]}, NOT_INTEGER),
    ({"prompt_tokens": 3, "completion_tokens": True}, NOT_INTEGER),
    ({"prompt_tokens": -3, "completion_tokens": 1}, NEGATIVE),
    ({"prompt_tokens": 3, "completion_tokens": 10**9}, OVER_CAP),
    ({"prompt_tokens": 3, "completion_tokens": 11}, OVER_CAP),
])
def test_lying_usage_bills_the_reservation(usage, reason):
    req = chat(max_tokens=10)
    billed = bill(req, usage)
    assert billed.refused == reason
    assert (billed.prompt_tokens, billed.completion_tokens) == (req.prompt_bound, 10)


def test_honest_usage_is_billed_as_reported():
    req = chat(max_tokens=10, n=2)
    assert bill(req, {"prompt_tokens": 7, "completion_tokens": 20}) == (7, 20, None, False)


def test_a_prompt_above_the_bound_is_billed_at_the_bound():
    req = chat(max_tokens=10)
    billed = bill(req, {"prompt_tokens": req.prompt_bound + 50, "completion_tokens": 3})
    assert (billed.prompt_tokens, billed.completion_tokens, billed.prompt_over_bound) == (req.prompt_bound, 3, True)


def test_embedding_usage_needs_no_completion_count():
    req = validate({"model": "e", "input": "x"}, "embeddings", default_max_tokens=1, model_name="e")
    assert bill(req, {"prompt_tokens": 2, "total_tokens": 2}) == (2, 0, None, False)


def test_partial_streams_bill_events_within_the_cap():
    req = chat(max_tokens=10)
    assert bill_partial(req, 4).completion_tokens == 4
    assert bill_partial(req, 40).completion_tokens == 10
