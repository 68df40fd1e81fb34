"""The OpenAPI document holds: schemathesis generates requests from the server's own
/openapi.json (valid ones and ones that break it) and sends them to a live server on loopback.
Every answer must be a documented status with a body that matches its documented schema; no
answer may be a 5xx; a request that breaks the schema must get a 4xx, and one that keeps it must
succeed unless it breaks a rule no JSON schema can state (a prompt longer than the context, a
grammar that does not compile), documented with the 400.

Bounded for CI: RADIXKV_FUZZ_EXAMPLES cases per operation (default 25; set thousands for a long
run), a served context of 40 tokens so no request runs long."""

from __future__ import annotations

import os

import pytest

from tests.conftest import cpu_engine

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from tests.live_server import live_server  # noqa: E402
from tests.tiny_model import save_tiny_llama_for_the_default_tokenizer  # noqa: E402

# what a 400 may say to a schema-valid request: rules no JSON schema can state (a prompt's token
# count against the context; whether a string holds a valid JSON Schema or regex; which tool
# names a request declares)
SEMANTIC_RULES = (
    "context",
    "device tier",
    "invalid json schema",
    "invalid regex",
    "invalid tool call grammar",
    "not among the tools",
    "no tools are given",
    "cannot be combined with response_format",
    "not both",
    "logit_bias names a token id outside",
    "top_logprobs needs logprobs",
    "choices (prompts x n) per call",
    "echo with logprobs is not supported",
)
EXAMPLES = int(os.environ.get("RADIXKV_FUZZ_EXAMPLES", "25"))
CONTEXT = 40


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory):
    """A tiny random Llama with the default model's tokenizer (and so its chat template): the
    fuzz checks the API, not the answers, and the default model on a slow CPU spent minutes
    generating."""
    path = save_tiny_llama_for_the_default_tokenizer(tmp_path_factory.mktemp("fuzz-model"))
    with (
        cpu_engine(
            str(path),
            tokenizer="default",
            kv_memory_gb=0.05,
            max_model_len=CONTEXT,
        ) as eng,
        live_server(eng) as (url, loop),
    ):
        yield url, loop


@pytest.fixture(scope="module")
def tally():
    """Responses by status over the run; printed at the end (visible with pytest -s)."""
    counts: dict[int, int] = {}
    yield counts
    print(f"\nfuzz: {sum(counts.values())} requests, by status: {dict(sorted(counts.items()))}")


@pytest.fixture(scope="module")
def api_schema(fuzzed_server):
    return schemathesis.openapi.from_url(fuzzed_server[0] + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")

ALWAYS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: CI never turns red by luck
)
def test_every_answer_is_documented_and_none_is_a_5xx(case, fuzzed_server, tally):
    response = case.call(timeout=60)
    tally[response.status_code] = tally.get(response.status_code, 0) + 1
    case.validate_response(response, checks=ALWAYS)
    if response.status_code == 400 and case.meta and _is_positive(case):
        message = response.json()["error"]["message"]
        assert any(rule in message for rule in SEMANTIC_RULES), (
            f"a schema-valid request was refused: {message}"
        )
    assert fuzzed_server[1].alive  # the engine thread survived


def _is_positive(case) -> bool:
    mode = getattr(getattr(case.meta, "generation", None), "mode", None)
    return getattr(mode, "value", mode) == "positive"
