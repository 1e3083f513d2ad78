"""Malformed requests never crash a translator: every field of realistic requests, replaced in turn by a value
of the wrong type, either still translates or raises a TranslationError (which the gateway turns into a 400
naming the field). Deterministic: the same mutations every run."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.gateway.dialects import anthropic, gemini, responses
from services.gateway.dialects.errors import TranslationError, UpstreamStreamError
from tests.dialects import test_anthropic_dialect as a_cases
from tests.dialects import test_gemini_dialect as g_cases
from tests.dialects import test_openai_and_responses_dialects as r_cases
from tests.dialects.recorded import (
    ANTHROPIC_TOOL_STREAM,
    GEMINI_STREAM,
    OPENAI_TEXT_STREAM,
    OPENAI_TOOL_STREAM,
    sse_events,
)

WRONG: list[Any] = [None, 7, -1, 1.5, True, "x", "", [], [7], ["x"], {}, {"type": "bogus"}]

Path = tuple[Any, ...]


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


def mutated(body: dict[str, Any]) -> Iterator[tuple[Path, Any, dict[str, Any]]]:
    for path in paths(body):
        for wrong in WRONG:
            copy_ = copy.deepcopy(body)
            target: Any = copy_
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = wrong
            yield path, wrong, copy_


CASES: dict[str, tuple[Callable[[dict[str, Any]], Any], dict[str, Any]]] = {
    "anthropic client": (anthropic.request_to_openai, a_cases.CLIENT_REQUEST),
    "to anthropic upstream": (lambda b: anthropic.request_from_openai(b, "c"), a_cases.OPENAI_REQUEST),
    "gemini client": (lambda b: gemini.request_to_openai(b, "g", True), g_cases.CLIENT_REQUEST),
    "to gemini upstream": (lambda b: gemini.request_from_openai(b, "g"), g_cases.OPENAI_REQUEST),
    "responses client": (responses.request_to_chat, r_cases.AGENT_REQUEST),
    "anthropic upstream answer": (anthropic.response_to_openai, a_cases.ANTHROPIC_RESPONSE),
    "gemini upstream answer": (lambda b: gemini.response_to_openai(b, "g"), g_cases.GEMINI_RESPONSE),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_wrongly_typed_field_is_translated_or_refused_by_name(case: str) -> None:
    translate, body = CASES[case]
    crashes = []
    for path, wrong, candidate in mutated(body):
        try:
            translate(candidate)
        except TranslationError as exc:
            assert exc.field and exc.message
        except Exception as exc:
            crashes.append(f"{'.'.join(map(str, path))}={wrong!r}: {type(exc).__name__}: {exc}")
    assert crashes == []


# Answers and stream events come from upstreams: a malformed one must still never crash the translator (the
# gateway decides what to tell the client), so these are read leniently and may not raise at all.
ANSWERS: dict[str, tuple[Callable[[dict[str, Any]], Any], dict[str, Any]]] = {
    "openai answer to anthropic client": (
        lambda b: anthropic.response_from_openai(b, "m"),
        a_cases.OPENAI_TOOL_RESPONSE,
    ),
    "openai answer to gemini client": (
        lambda b: gemini.response_from_openai(b, "m"),
        a_cases.OPENAI_TOOL_RESPONSE,
    ),
    "openai answer to responses client": (
        lambda b: responses.response_from_chat(b, {"model": "m"}),
        a_cases.OPENAI_TOOL_RESPONSE,
    ),
}


def _feed_anthropic_events(events: list[tuple[str | None, Any]]) -> None:
    conv = anthropic.StreamToOpenAI()
    for name, data in events:
        conv.feed(str(name), data)


def _feed_gemini_payloads(events: list[tuple[str | None, Any]]) -> None:
    conv = gemini.StreamToOpenAI("g")
    for _, data in events:
        conv.feed(data)
    conv.finish()


def _feed_chunks(make: Callable[[], Any]) -> Callable[[list[tuple[str | None, Any]]], None]:
    def run(events: list[tuple[str | None, Any]]) -> None:
        conv = make()
        for _, chunk in events:
            conv.feed(chunk)
        conv.finish()

    return run


STREAMS: dict[str, tuple[Callable[[list[tuple[str | None, Any]]], None], str]] = {
    "anthropic upstream stream": (_feed_anthropic_events, ANTHROPIC_TOOL_STREAM),
    "gemini upstream stream": (_feed_gemini_payloads, GEMINI_STREAM),
    "openai stream to anthropic client": (
        _feed_chunks(lambda: anthropic.StreamFromOpenAI("m")),
        OPENAI_TOOL_STREAM,
    ),
    "openai stream to gemini client": (
        _feed_chunks(lambda: gemini.StreamFromOpenAI("m")),
        OPENAI_TOOL_STREAM,
    ),
    "openai stream to responses client": (
        _feed_chunks(lambda: responses.StreamFromChat({}, "m")),
        OPENAI_TEXT_STREAM,
    ),
}


@pytest.mark.parametrize("case", list(ANSWERS))
def test_malformed_answers_are_read_leniently(case: str) -> None:
    translate, body = ANSWERS[case]
    crashes = []
    for path, wrong, candidate in mutated(body):
        try:
            translate(candidate)
        except Exception as exc:
            crashes.append(f"{'.'.join(map(str, path))}={wrong!r}: {type(exc).__name__}: {exc}")
    assert crashes == []


@pytest.mark.parametrize("case", list(STREAMS))
def test_malformed_stream_events_are_read_leniently(case: str) -> None:
    run, raw = STREAMS[case]
    events = [(n, d) for n, d in sse_events(raw) if isinstance(d, dict)]
    crashes = []
    for i, (name, data) in enumerate(events):
        for path, wrong, candidate in mutated(data):
            try:
                run([*events[:i], (name, candidate), *events[i + 1 :]])
            except UpstreamStreamError:
                pass  # a mutation that turned the event into an upstream error report
            except Exception as exc:
                crashes.append(f"event {i} {'.'.join(map(str, path))}={wrong!r}: {type(exc).__name__}: {exc}")
    assert crashes == []
