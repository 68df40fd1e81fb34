"""The HTTP server against the real `openai` client on loopback, with the default model:
chat and completions, streaming and not; cache hits in `usage`; a JSON 4xx for each kind of bad
input with the server answering normally after each; 64 concurrent streams with a quarter
disconnecting midway, then the integrity check; metrics, health, cache admin, API keys."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

from radixkv import Engine  # noqa: E402
from tests.live_server import live_server  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    remote = tmp_path_factory.mktemp("remote-tier").as_uri()
    with (
        # float32: streamed and not, cached prefix or not, greedy tokens agree exactly (bf16
        # rounding may tip a near tie once a prefix comes from the cache)
        Engine(
            device="cpu",
            dtype="float32",
            kv_memory_gb=0.25,
            host_memory_gb=0.25,
            remote_url=remote,
        ) as eng,
        live_server(eng) as (url, loop),
    ):
        yield url, loop


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0)


def _quiesced(url: str) -> dict:
    """/cache/stats once no request is running or waiting and no remote write is in flight (a
    write pins its node's path, device pages included, until the store acknowledges it)."""
    deadline = time.monotonic() + 60
    while True:
        stats = httpx.get(url + "/cache/stats", timeout=60).json()
        sched = stats["scheduler"]
        if sched["running"] == 0 and sched["waiting"] == 0 and stats["remote_inflight"] == 0:
            return stats
        assert time.monotonic() < deadline, stats["scheduler"]
        time.sleep(0.1)


def test_models_and_health(served, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    health = httpx.get(served[0] + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL


def test_chat_streaming_equals_non_streaming(client):
    whole = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=16, temperature=0
    )
    assert "Paris" in whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens >= 1
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, roles = "", None, None, set()
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            roles.add(choice.delta.role)
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert "assistant" in roles
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_completions_streaming_equals_non_streaming(client):
    prompt = "The three primary colours are"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    parts = [
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(parts) == whole.choices[0].text and len(parts) > 1
    by_ids = client.completions.create(
        model=MODEL, prompt=[504, 1075, 314], max_tokens=4, temperature=0
    )
    assert by_ids.usage.prompt_tokens == 3


def test_second_turn_reports_cached_tokens(client):
    messages = [
        {"role": "system", "content": "You are a geography tutor. " * 6},
        {"role": "user", "content": "Which river flows through Vienna?"},
    ]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0
    )
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And through Budapest?"},
    ]
    second = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0
    )
    c1 = first.usage.prompt_tokens_details.cached_tokens
    c2 = second.usage.prompt_tokens_details.cached_tokens
    assert c2 > c1
    assert c2 >= first.usage.prompt_tokens - 16  # all but the partial last page
    assert c2 <= second.usage.prompt_tokens


BAD = [
    # (what, body, status, words the message must contain)
    ("unknown model", {"model": "gpt-17", "prompt": "hi"}, 404, "gpt-17"),
    ("empty prompt", {"model": MODEL, "prompt": ""}, 400, "prompt"),
    ("empty token list", {"model": MODEL, "prompt": []}, 400, "prompt"),
    ("token out of vocab", {"model": MODEL, "prompt": [10**9]}, 400, "token ids"),
    (
        "max_tokens as string",
        {"model": MODEL, "prompt": "hi", "max_tokens": "5"},
        400,
        "max_tokens",
    ),
    (
        "temperature wrong type",
        {"model": MODEL, "prompt": "hi", "temperature": "hot"},
        400,
        "temperature",
    ),
    (
        "negative temperature",
        {"model": MODEL, "prompt": "hi", "temperature": -1},
        400,
        "temperature",
    ),
    ("top_p zero", {"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("top_p above one", {"model": MODEL, "prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("negative top_k", {"model": MODEL, "prompt": "hi", "top_k": -2}, 400, "top_k"),
    ("zero max_tokens", {"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    (
        "n above 16",
        {"model": MODEL, "prompt": "hi", "n": 17},
        400,
        "n: Input should be less than or equal to 16",
    ),
    (
        "longer than context",
        {"model": MODEL, "prompt": [1] * 9000, "max_tokens": 1},
        400,
        "context",
    ),
    (
        "max_tokens beyond context",
        {"model": MODEL, "prompt": "hi", "max_tokens": 10**6},
        400,
        "context",
    ),
    ("missing prompt", {"model": MODEL}, 400, "prompt"),
    ("suffix", {"model": MODEL, "prompt": "def f(", "suffix": "  return x"}, 400, "suffix"),
    ("echo wrong type", {"model": MODEL, "prompt": "hi", "echo": "yes"}, 400, "echo"),
    (
        "echo with logprobs",
        {"model": MODEL, "prompt": "hi", "echo": True, "logprobs": 2},
        400,
        "echo",
    ),
]


@pytest.mark.parametrize("what,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_completion_input_is_a_json_4xx_and_the_server_stays_up(
    served, client, what, body, status, words
):
    r = httpx.post(served[0] + "/v1/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"], err
    assert err["type"] in ("invalid_request_error",)
    ok = client.completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0)
    assert ok.usage.completion_tokens == 2


BAD_RAW = [
    ("malformed JSON", "/v1/completions", b'{"model": "x", "prompt": ', "not valid JSON"),
    ("body not an object", "/v1/chat/completions", b"[1, 2]", "invalid request"),
    (
        "messages not a list",
        "/v1/chat/completions",
        b'{"model": "%s", "messages": "hi"}',
        "messages",
    ),
    ("empty messages", "/v1/chat/completions", b'{"model": "%s", "messages": []}', "messages"),
    (
        "message without content type",
        "/v1/chat/completions",
        b'{"model": "%s", "messages": [{"role": 3}]}',
        "role",
    ),
    ("generate with both prompts", "/generate", b'{"text": "a", "input_ids": [1]}', "exactly one"),
    (
        "generate bad sampling",
        "/generate",
        b'{"input_ids": [1], "sampling_params": {"temperature": -3}}',
        "temperature",
    ),
]


LONE_SURROGATE = [  # JSON may carry "\ud800": a string no tokenizer or log can take
    ("/v1/completions", {"model": MODEL, "prompt": "a\ud800b"}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stop": ["x\udfff"]}, "stop.0"),
    (
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "a\ud800"}]},
        "messages.0.content",
    ),
    ("/v1/chat/completions", {"model": "m\ud800", "messages": []}, "model"),
    ("/generate", {"text": "hi", "rid": "r\ud800"}, "rid"),
]


@pytest.mark.parametrize("path,body,field", LONE_SURROGATE, ids=[b[2] for b in LONE_SURROGATE])
def test_invalid_unicode_is_a_400_naming_the_field(served, client, path, body, field):
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogate travels as the escape \ud800
    r = httpx.post(
        served[0] + path, content=raw, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert f"{field} is not valid Unicode" in message, message
    ok = client.completions.create(model=MODEL, prompt="Hello", max_tokens=2, temperature=0)
    assert ok.usage.completion_tokens == 2


@pytest.mark.parametrize("what,path,raw,words", BAD_RAW, ids=[b[0] for b in BAD_RAW])
def test_malformed_bodies_are_json_400s(served, client, what, path, raw, words):
    raw = raw.replace(b"%s", MODEL.encode())
    r = httpx.post(
        served[0] + path, content=raw, headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]
    ok = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)
    assert ok.choices[0].message.content


def test_native_generate_takes_and_returns_token_ids(served, client):
    body = {
        "input_ids": [504, 1075, 314, 253],
        "sampling_params": {"max_new_tokens": 6, "temperature": 0},
    }
    r = httpx.post(served[0] + "/generate", json=body, timeout=60).json()
    assert len(r["output_ids"]) == 6 and r["meta_info"]["finish_reason"] == {"type": "length"}
    assert r["meta_info"]["prompt_tokens"] == 4
    same = client.completions.create(
        model=MODEL, prompt=body["input_ids"], max_tokens=6, temperature=0
    )
    assert same.choices[0].text == r["text"]
    with httpx.stream(
        "POST", served[0] + "/generate", json=body | {"stream": True}, timeout=60
    ) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    import json

    last = json.loads(events[-2])
    assert last["output_ids"] == r["output_ids"] and last["text"] == r["text"]


def test_64_concurrent_streams_with_a_quarter_disconnecting(served):
    url, _loop = served
    aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)

    async def one(i: int) -> tuple[str, int]:
        quitter = i % 4 == 0
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "user", "content": f"Count from {i} to {i + 40}, one number a line."}
            ],
            max_tokens=24,
            temperature=0.7,
            seed=i,
            extra_body={"ignore_eos": True},
            stream=True,
        )
        chunks, finish = 0, None
        async for chunk in stream:
            chunks += 1
            for c in chunk.choices:
                finish = c.finish_reason or finish
            if quitter and chunks == 6:
                await stream.close()  # the client goes away mid-stream
                return "quit", chunks
        return finish, chunks

    async def run_all():
        return await asyncio.gather(*(one(i) for i in range(64)))

    results = asyncio.run(run_all())
    quit_ = [r for r in results if r[0] == "quit"]
    done = [r for r in results if r[0] != "quit"]
    assert len(quit_) == 16 and len(done) == 48
    assert all(f == "length" for f, _ in done), done  # ignore_eos: each ran to max_tokens
    stats = _quiesced(url)
    integrity = stats["integrity"]  # recounted from scratch on the engine thread
    assert integrity["device"]["locked"] == 0 and integrity["device"]["request_or_inflight"] == 0
    finished = httpx.get(url + "/metrics").text
    assert 'radixkv_requests_finished_total{reason="abort"}' in finished
    flushed = httpx.post(url + "/cache/flush", timeout=60).json()
    dev = flushed["integrity"]["device"]
    assert dev["free"] == dev["capacity"], dev  # every page came back


def test_metrics_are_prometheus_text(served, client):
    client.completions.create(model=MODEL, prompt="One two", max_tokens=3, temperature=0)
    text = httpx.get(served[0] + "/metrics").text
    for family in (
        "radixkv_requests_running",
        "radixkv_requests_waiting",
        "radixkv_cache_hit_rate",
        'radixkv_cache_pages{state="used",tier="device"}',  # labels in sorted order
        'radixkv_cache_evicted_pages_total{tier="host"}',
        'radixkv_transfer_bytes_total{direction="host_to_device"}',
        "radixkv_remote_queue_depth",
        'radixkv_time_to_first_token_seconds_bucket{le="+Inf"}',
        "radixkv_inter_token_latency_seconds_count",
    ):
        assert family in text, family
    ttft = [
        ln for ln in text.splitlines() if ln.startswith("radixkv_time_to_first_token_seconds_count")
    ]
    assert float(ttft[0].split()[-1]) >= 1  # prometheus_client writes counts as floats


def test_metrics_parse_with_prometheus_client_and_keep_their_names(served, client):
    from prometheus_client.parser import text_string_to_metric_families

    client.completions.create(model=MODEL, prompt="One two three", max_tokens=2)
    families = {
        f.name: f for f in text_string_to_metric_families(httpx.get(served[0] + "/metrics").text)
    }
    for name, kind in (
        ("radixkv_requests_running", "gauge"),
        ("radixkv_requests_finished", "counter"),
        ("radixkv_cache_pages", "gauge"),
        ("radixkv_transfer_bytes", "counter"),
        ("radixkv_cached_prompt_tokens", "counter"),
        ("radixkv_time_to_first_token_seconds", "histogram"),
        ("radixkv_request_latency_seconds", "histogram"),
    ):
        assert families[name].type == kind, name
    finished = {s.labels["reason"]: s.value for s in families["radixkv_requests_finished"].samples}
    assert finished.get("length", 0) >= 1
    pages = {
        (s.labels["tier"], s.labels["state"]): s.value
        for s in families["radixkv_cache_pages"].samples
    }
    stats = httpx.get(served[0] + "/cache/stats").json()["pages"]["device"]
    assert pages[("device", "free")] + pages[("device", "used")] == stats["capacity"]


def test_api_key_is_required_except_for_health(served):
    from fastapi.testclient import TestClient

    from engine.http.app import build_app

    _url, loop = served
    app = build_app(loop, model_name=MODEL, api_key="s3cret")
    http = TestClient(app)  # no lifespan: the running engine loop is shared, not restarted
    assert http.get("/v1/models").status_code == 401
    assert http.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = http.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL
    assert http.get("/health").status_code == 200
    denied = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
    assert denied.status_code == 401 and "API key" in denied.json()["error"]["message"]
    lower = http.get("/v1/models", headers={"Authorization": "bearer  s3cret "})
    assert lower.status_code == 200  # the scheme in any case (RFC 7235)
    # admin routes: refused while only the inference key is set, even with that key
    flush = http.post("/cache/flush", headers={"Authorization": "Bearer s3cret"})
    assert flush.status_code == 403 and "admin key" in flush.json()["error"]["message"]
    health = http.get("/health").json()
    assert set(health) == {"status", "model", "remote_tier"}  # no path, no error text


def test_the_admin_key_guards_the_admin_routes_apart_from_inference(served):
    from fastapi.testclient import TestClient

    from engine.http.app import build_app

    _url, loop = served
    http = TestClient(build_app(loop, model_name=MODEL, api_key="infer", admin_key="admin"))
    inference, admin = (
        {"Authorization": "Bearer infer"},
        {"Authorization": "Bearer admin"},
    )
    assert http.post("/cache/flush", headers=inference).status_code == 401
    assert http.get("/cache/stats", headers=inference).status_code == 401
    assert http.post("/cache/flush", headers=admin).status_code == 200
    assert http.post("/flush_cache", headers=inference).status_code == 401  # SGLang's spelling
    assert http.post("/flush_cache", headers=admin).status_code == 200
    assert http.get("/cache/stats", headers=admin).status_code == 200
    assert http.get("/v1/models", headers=admin).status_code == 401  # and no inference
    assert http.get("/v1/models", headers=inference).status_code == 200


def test_openapi_documents_the_errors_the_server_sends(served):
    doc = httpx.get(served[0] + "/openapi.json", timeout=30).json()
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = op["responses"]
            assert "422" not in codes, (method, path)  # FastAPI's default: never sent here
            assert codes["500"]["content"]["application/json"]["schema"] == error
            if method == "post":
                assert codes["400"]["content"]["application/json"]["schema"] == error
    completion = doc["components"]["schemas"]["CompletionRequest"]["properties"]
    assert completion["model"]["enum"] == [MODEL]
    assert completion["n"]["maximum"] == 16  # what the validation allows, and no more
    r = httpx.post(served[0] + "/v1/completions", json={"model": MODEL, "prompt": "hi", "n": 1.0})
    assert r.status_code == 200, r.text  # JSON Schema's integer 1.0 is an integer here too


CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "is_capital": {"type": "boolean"},
    },
    "required": ["city", "is_capital"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_always_validates(client, stream):
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    ask = [{"role": "user", "content": "Name the capital of France as JSON."}]
    for temperature in (0.0, 1.0):
        args = dict(model=MODEL, messages=ask, max_tokens=60, temperature=temperature, seed=3)
        if stream:
            chunks = client.chat.completions.create(**args, response_format=fmt, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            r = client.chat.completions.create(**args, response_format=fmt)
            assert r.choices[0].finish_reason == "stop"
            text = r.choices[0].message.content
        jsonschema.validate(json.loads(text), CITY)


def test_json_object_and_regex_and_a_bad_grammar(served, client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat."}],
        max_tokens=80,
        temperature=1.0,
        seed=1,
        response_format={"type": "json_object"},
    )
    if r.choices[0].finish_reason == "stop":  # cut by max_tokens it is a prefix of an object
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    body = {"text": "My code is", "sampling_params": {"regex": "[0-9]{3}-[a-z]{2}"}}
    out = httpx.post(served[0] + "/generate", json=body, timeout=60).json()
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", out["text"]), out
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    r = httpx.post(
        served[0] + "/v1/chat/completions",
        json={"model": MODEL, "messages": QUESTION, "response_format": bad},
        timeout=60,
    )
    assert r.status_code == 400 and "invalid json schema" in r.json()["error"]["message"]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_a_forced_tool_call_comes_back_as_tool_calls(client, choice):
    jsonschema = pytest.importorskip("jsonschema")
    greedy = dict(temperature=0, max_tokens=100)
    r = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=choice, **greedy
    )
    choice0 = r.choices[0]
    assert choice0.finish_reason == "tool_calls"
    (call,) = choice0.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # streamed: the same call as a tool_calls delta, no call text in the content
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=ASK_WEATHER,
            tools=[WEATHER],
            tool_choice=choice,
            max_tokens=60,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == ""
    (streamed,) = [t for d in deltas for t in d.tool_calls or ()]
    assert streamed.function.name == "get_weather"  # (bf16: a cached prefix may shift a token)
    jsonschema.validate(json.loads(streamed.function.arguments), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_history_legacy_functions_and_bad_choices(served, client):
    history = ASK_WEATHER + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=8)
    assert r.usage.prompt_tokens > 60  # the tools, the call and its result are in the prompt
    legacy = httpx.post(
        served[0] + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": ASK_WEATHER,
            "functions": [WEATHER["function"]],
            "function_call": {"name": "get_weather"},
            "max_tokens": 60,
        },
        timeout=60,
    ).json()
    assert legacy["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    for bad, words in [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "not among",
        ),
        ({"tool_choice": "required"}, "no tools"),
        ({"tools": "get_weather"}, "tools"),
    ]:
        r = httpx.post(
            served[0] + "/v1/chat/completions",
            json={"model": MODEL, "messages": ASK_WEATHER, **bad},
            timeout=60,
        )
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_model_by_id_and_error_codes_are_strings(served, client):
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.body["code"] == "model_not_found"
    r = httpx.post(
        served[0] + "/v1/completions",
        json={"model": MODEL, "prompt": "hi", "max_tokens": 10**6},
        timeout=60,
    )
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = httpx.post(served[0] + "/v1/completions", json={"model": MODEL}, timeout=60)
    assert r.json()["error"]["code"] == "invalid_request"


def test_a_request_without_sampling_fields_gets_the_models_defaults(served):
    """The server's defaults are the model's (for the default model, temperature 0.2), not
    OpenAI's 1.0; a request's own value wins."""
    ctx_defaults = served[1].core.generation_defaults
    assert ctx_defaults["temperature"] == 0.2 and ctx_defaults["top_p"] == 0.9
    from engine.http.common import ServingContext

    ctx = ServingContext(served[1], MODEL)
    ids = ctx.encode("Hello")
    req = ctx.make_request(
        ids, {"max_tokens": 2, "temperature": None, "top_p": None, "top_k": None}
    )
    assert (req.params.temperature, req.params.top_p, req.params.top_k) == (0.2, 0.9, 0)
    req = ctx.make_request(ids, {"max_tokens": 2, "temperature": 0.0, "top_p": None, "top_k": 3})
    assert (req.params.temperature, req.params.top_k) == (0.0, 3)


def test_logit_bias_min_tokens_and_penalties_reach_the_sampler(served, client):
    forced = 42
    r = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=4, temperature=0, logit_bias={str(forced): 100}
    )
    assert r.choices[0].text == served[1].core.tokenizer.decode([forced] * 4)
    eos = served[1].core.tokenizer.token_id(served[1].core.tokenizer.eos_token)
    r = client.completions.create(
        model=MODEL,
        prompt="Hi",
        max_tokens=6,
        temperature=0,
        logit_bias={str(eos): 100},  # EOS first, but not before min_tokens
        extra_body={"min_tokens": 3},
    )
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "stop"  # 3, then EOS
    r = client.completions.create(
        model=MODEL, prompt="One, two,", max_tokens=8, presence_penalty=1.5, frequency_penalty=1.0
    )
    assert r.usage.completion_tokens >= 1
    bad = httpx.post(
        served[0] + "/v1/completions",
        json={"model": MODEL, "prompt": "hi", "logit_bias": {"999999": 1}},
        timeout=60,
    )
    assert bad.status_code == 400 and "logit_bias" in bad.json()["error"]["message"]


def test_logprobs_on_chat_and_completions_streamed_and_not(client):
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)  # greedy
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
    assert "".join(e.token for e in content).startswith(r.choices[0].message.content[:3])
    streamed = [
        e
        for c in client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=5,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
            stream=True,
        )
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.token for e in streamed] == [e.token for e in content]
    c = client.completions.create(
        model=MODEL, prompt="One, two,", max_tokens=4, temperature=0, logprobs=2
    )
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == c.choices[0].text and lp.text_offset[0] == 0
    assert all(len(t) == 2 for t in lp.top_logprobs)


def test_n_choices_share_one_prefill_and_prompt_lists_give_a_choice_each(served, client):
    stats = served[1].stats
    before = sum(stats.cached_tokens.values())
    question = [{"role": "user", "content": "Name a colour. " * 20}]  # several pages long
    r = client.chat.completions.create(
        model=MODEL, messages=question, max_tokens=6, temperature=1.0, seed=5, n=3
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1  # seed, seed + 1, seed + 2
    assert 3 <= r.usage.completion_tokens <= 18  # every choice's tokens, the prompt once
    prompt = r.usage.prompt_tokens
    followers = (
        sum(stats.cached_tokens.values()) - before - r.usage.prompt_tokens_details.cached_tokens
    )
    assert followers >= 2 * (prompt - 16)  # the other two choices found the prompt cached
    c = client.completions.create(
        model=MODEL, prompt=["One, two,", "Red, green,"], max_tokens=3, temperature=0, n=2
    )
    assert [x.index for x in c.choices] == [0, 1, 2, 3]
    assert c.choices[0].text == c.choices[1].text  # greedy: a prompt's two choices agree
    alone = client.completions.create(
        model=MODEL, prompt="Red, green,", max_tokens=3, temperature=0
    )
    assert c.choices[2].text == alone.choices[0].text
    assert 4 <= c.usage.completion_tokens <= 12
    tok = served[1].core.tokenizer
    assert c.usage.prompt_tokens == len(tok.encode("One, two,")) + len(tok.encode("Red, green,"))


def test_streams_carry_every_choice(served, client):
    """n > 1 and prompt lists stream too: each chunk names its choice, each choice's text equals
    the same call's unstreamed choice, usage counts them all, and the followers of a prompt
    found it cached (one prefill)."""
    kw = dict(model=MODEL, max_tokens=5, temperature=0)
    prompts = ["One, two,", "Red, green,"]
    whole = client.completions.create(prompt=prompts, n=2, **kw)
    texts, finishes, usage_seen = ["", "", "", ""], [None] * 4, None
    for c in client.completions.create(
        prompt=prompts, n=2, stream=True, stream_options={"include_usage": True}, **kw
    ):
        for ch in c.choices:
            texts[ch.index] += ch.text
            finishes[ch.index] = ch.finish_reason or finishes[ch.index]
        usage_seen = c.usage or usage_seen
    assert texts == [ch.text for ch in whole.choices]
    assert all(f in ("length", "stop") for f in finishes)
    assert usage_seen.completion_tokens == whole.usage.completion_tokens
    assert usage_seen.prompt_tokens == whole.usage.prompt_tokens
    chat = [{"role": "user", "content": "Name a colour. " * 20}]
    stats = served[1].stats
    before = sum(stats.cached_tokens.values())
    parts, roles = {}, 0
    for c in client.chat.completions.create(messages=chat, n=3, stream=True, seed=2, **kw):
        for ch in c.choices:
            roles += ch.delta.role == "assistant"
            parts[ch.index] = parts.get(ch.index, "") + (ch.delta.content or "")
    assert sorted(parts) == [0, 1, 2] and roles == 3
    assert len(set(parts.values())) == 1  # greedy: the three agree
    prompt = client.chat.completions.create(messages=chat, **kw).usage.prompt_tokens
    assert sum(stats.cached_tokens.values()) - before >= 2 * (prompt - 16)


def test_echo_puts_the_prompt_before_the_completion(client):
    """echo: the prompt's text, then the same completion as without it (streamed or not; a
    token-id prompt echoes as its decoded text); suffix: null is accepted."""
    plain = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=6, temperature=0)
    echoed = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=6, temperature=0, echo=True, suffix=None
    )
    assert echoed.choices[0].text == "The sky is" + plain.choices[0].text
    streamed = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=6, temperature=0, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == echoed.choices[0].text
    from engine.model_loader import load_tokenizer

    tok = load_tokenizer("default", 49152)
    ids = tok.encode("The sky is")
    by_ids = client.completions.create(
        model=MODEL, prompt=ids, max_tokens=6, temperature=0, echo=True
    )
    assert by_ids.choices[0].text == tok.decode(ids) + plain.choices[0].text


def test_a_session_id_reaches_the_prefetcher_and_its_metrics_show(served, client):
    url = served[0]
    client.completions.create(
        model=MODEL,
        prompt="Session one says hello",
        max_tokens=2,
        extra_headers={"X-Session-ID": "conversation-7"},
    )
    client.completions.create(model=MODEL, prompt="Another one", max_tokens=2, user="user-42")
    stats = _quiesced(url)
    assert stats["prefetch"]["sessions_waiting"] >= 2  # both turns ended; their returns awaited
    long_id = httpx.post(
        url + "/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 1},
        headers={"X-Session-ID": "s" * 300},
    )
    assert long_id.status_code == 400 and "X-Session-ID" in long_id.json()["error"]["message"]
    bad_user = httpx.post(
        url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1, "user": 7}
    )
    assert bad_user.status_code == 400 and "user" in bad_user.text
    text = httpx.get(url + "/metrics").text
    for family in (
        'radixkv_prefetch_pages_total{outcome="moved"}',
        "radixkv_prefetch_precision",
        "radixkv_prefetch_coverage",
    ):
        assert family in text, family


def test_a_gateway_discovers_the_worker_and_reads_its_load(served, client):
    """What SMG and the SGLang router probe, in SGLang's shapes (tests/test_gateway.py runs the
    real SMG against them)."""
    url = served[0]
    info = httpx.get(url + "/server_info").json()
    assert info["served_model_name"] == MODEL and info["engine"] == "radixkv"
    assert info["page_size"] > 0 and info["max_total_num_tokens"] > 0
    assert httpx.get(url + "/get_server_info").json() == info
    model = httpx.get(url + "/model_info").json()
    assert model["is_generation"] and model["architectures"] == ["LlamaForCausalLM"]
    for _ in range(2):  # the second finds the first's pages
        client.completions.create(model=MODEL, prompt="Load me " * 20, max_tokens=2)
    (load,) = httpx.get(url + "/v1/loads").json()["loads"]
    assert load["num_running_reqs"] == 0 and load["num_waiting_reqs"] == 0
    assert 0 <= load["token_usage"] <= 1 and 0 < load["cache_hit_rate"] <= 1
    assert load["max_total_num_tokens"] == info["max_total_num_tokens"]
    assert httpx.get(url + "/get_load").json()[0]["num_reqs"] == 0
    assert httpx.post(url + "/flush_cache", timeout=60).status_code == 200
    assert _quiesced(url)["pages"]["device"]["free"] > 0
    # a gateway's routing key names the conversation when no X-Session-ID does
    empty = httpx.post(
        url + "/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 1},
        headers={"X-SMG-Routing-Key": ""},
    )
    assert empty.status_code == 400 and "X-SMG-Routing-Key" in empty.json()["error"]["message"]
