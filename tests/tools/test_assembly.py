"""ToolCallAssembler: every upstream dialect in, OpenAI tool_calls deltas out."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagecast.tools import AssembledCall, ToolCallAssembler

GENERATED_ID = re.compile(r"^call_[0-9a-f]{24}$")


class Run:
    """What a relay would send for one stream, and what a client rebuilds from it."""

    def __init__(self, assembler: ToolCallAssembler) -> None:
        self.assembler = assembler
        self.deltas: list[dict[str, Any]] = []
        self.text_pieces: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.text_pieces)

    @property
    def calls(self) -> list[AssembledCall]:
        return self.assembler.calls

    def feed(self, delta: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        out, text = self.assembler.feed(delta)
        self._keep(out, text)
        return out, text

    def finish(self) -> tuple[list[dict[str, Any]], str | None]:
        out, text = self.assembler.finish()
        self._keep(out, text)
        return out, text

    def _keep(self, out: list[dict[str, Any]], text: str | None) -> None:
        self.deltas += out
        if text is not None:
            assert text != "", "text is None or non-empty"
            self.text_pieces.append(text)

    def client_view(self) -> list[tuple[str, str, str]]:
        """Rebuild (id, name, arguments) per index as an OpenAI client does, checking the
        normalised shape on the way."""
        seen: dict[int, dict[str, str]] = {}
        for delta in self.deltas:
            index = delta["index"]
            if index not in seen:
                assert set(delta) == {"index", "id", "type", "function"}, delta
                assert delta["type"] == "function"
                assert delta["function"]["arguments"] == ""
                assert isinstance(delta["id"], str) and delta["id"]
                assert index == len(seen), "indexes are 0, 1, 2... in order of appearance"
                seen[index] = {"id": delta["id"], "name": delta["function"]["name"], "args": ""}
            else:
                assert set(delta) == {"index", "function"}, delta
                assert set(delta["function"]) == {"arguments"}
                seen[index]["args"] += delta["function"]["arguments"]
        return [(c["id"], c["name"], c["args"]) for _, c in sorted(seen.items())]


def run(deltas: list[dict[str, Any]], tool_names: list[str] | None = None) -> Run:
    r = Run(ToolCallAssembler(tool_names))
    for delta in deltas:
        r.feed(delta)
    r.finish()
    assert r.client_view() == [(c.id, c.name, c.arguments) for c in r.calls]
    assert [c.index for c in r.calls] == list(range(len(r.calls)))
    return r


def named(calls: list[AssembledCall]) -> list[tuple[str, Any]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


def tc(**item: Any) -> dict[str, Any]:
    return {"tool_calls": [item]}


# ---------------------------------------------------------------------------------------------
# (a) OpenAI


def test_openai_interleaved_parallel_calls() -> None:
    r = Run(ToolCallAssembler())
    first, _ = r.feed(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_A",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
        }
    )
    assert first == [
        {
            "index": 0,
            "id": "call_A",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    r.feed(
        tc(index=1, id="call_B", type="function", function={"name": "get_time", "arguments": ""})
    )
    out, _ = r.feed(tc(index=0, function={"arguments": '{"latitude": 48.8'}))
    assert out == [{"index": 0, "function": {"arguments": '{"latitude": 48.8'}}]
    r.feed(tc(index=1, function={"arguments": '{"timezone": '}))
    r.feed(tc(index=0, function={"arguments": ', "longitude": 2.35}'}))
    r.feed(tc(index=1, function={"arguments": '"Europe/Paris"}'}))
    r.finish()
    assert r.calls == [
        AssembledCall("call_A", "get_weather", '{"latitude": 48.8, "longitude": 2.35}', 0),
        AssembledCall("call_B", "get_time", '{"timezone": "Europe/Paris"}', 1),
    ]
    assert r.client_view() == [(c.id, c.name, c.arguments) for c in r.calls]
    assert r.text == ""


def test_openai_upstream_indexes_are_renumbered_in_order_of_appearance() -> None:
    r = run(
        [
            tc(index=3, id="x", function={"name": "b", "arguments": "{}"}),
            tc(index=1, id="y", function={"name": "a", "arguments": "{}"}),
        ]
    )
    assert [(c.index, c.id, c.name) for c in r.calls] == [(0, "x", "b"), (1, "y", "a")]


def test_several_calls_in_one_delta() -> None:
    r = run(
        [
            {
                "tool_calls": [
                    {"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x": 1}'}},
                    {"index": 1, "id": "b", "function": {"name": "g", "arguments": '{"y": 2}'}},
                ]
            }
        ]
    )
    assert named(r.calls) == [("f", {"x": 1}), ("g", {"y": 2})]


# ---------------------------------------------------------------------------------------------
# (b) llama.cpp server


def test_llama_cpp_repeated_id_and_legacy_function_call_are_not_double_counted() -> None:
    fragments = ["", '{"city"', ': "Par', 'is"}']
    deltas = []
    for i, fragment in enumerate(fragments):
        function = {"arguments": fragment}
        if i == 0:
            function["name"] = "geocode"
        deltas.append(
            {
                "content": None,
                "function_call": dict(function),
                "tool_calls": [
                    {"index": 0, "id": "call_llama", "type": "function", "function": function}
                ],
            }
        )
    r = run(deltas)
    assert r.calls == [AssembledCall("call_llama", "geocode", '{"city": "Paris"}', 0)]


def test_llama_cpp_name_repeated_on_every_delta() -> None:
    r = run(
        [
            tc(index=0, id="c1", function={"name": "f", "arguments": '{"a": '}),
            tc(index=0, id="c1", function={"name": "f", "arguments": "1}"}),
            tc(index=0, id="c1", function={"name": "f", "arguments": ""}),
        ]
    )
    assert r.calls == [AssembledCall("c1", "f", '{"a": 1}', 0)]


def test_legacy_function_call_alone_is_one_call() -> None:
    r = run(
        [
            {"function_call": {"name": "get_time", "arguments": ""}},
            {"function_call": {"arguments": '{"timezone":'}},
            {"function_call": {"arguments": ' "UTC"}'}},
        ]
    )
    assert len(r.calls) == 1
    assert GENERATED_ID.match(r.calls[0].id)
    assert named(r.calls) == [("get_time", {"timezone": "UTC"})]


def test_legacy_function_call_after_tool_calls_is_ignored() -> None:
    r = run(
        [
            tc(index=0, id="a", function={"name": "f", "arguments": '{"x": 1}'}),
            {"function_call": {"name": "f", "arguments": '{"x": 1}'}},
        ]
    )
    assert named(r.calls) == [("f", {"x": 1})]


# ---------------------------------------------------------------------------------------------
# (c) Ollama


def test_ollama_index_zero_for_every_call_told_apart_by_id() -> None:
    r = run(
        [
            tc(index=0, id="call_1", function={"name": "geocode", "arguments": '{"city":"Oslo"}'}),
            tc(index=0, id="call_2", function={"name": "geocode", "arguments": '{"city":"Rome"}'}),
        ]
    )
    assert [(c.id, c.index) for c in r.calls] == [("call_1", 0), ("call_2", 1)]
    assert named(r.calls) == [("geocode", {"city": "Oslo"}), ("geocode", {"city": "Rome"})]


def test_ollama_no_index_no_id_calls_split_on_a_new_name() -> None:
    r = run(
        [
            tc(function={"name": "geocode", "arguments": {"city": "Oslo"}}),
            tc(function={"name": "get_time", "arguments": {"timezone": "Europe/Oslo"}}),
            tc(function={"name": "geocode", "arguments": {"city": "Bergen"}}),
        ]
    )
    assert named(r.calls) == [
        ("geocode", {"city": "Oslo"}),
        ("get_time", {"timezone": "Europe/Oslo"}),
        ("geocode", {"city": "Bergen"}),
    ]
    assert len({c.id for c in r.calls}) == 3
    assert all(GENERATED_ID.match(c.id) for c in r.calls)


def test_dict_arguments_are_serialised_to_json_text() -> None:
    r = run([tc(index=0, id="a", function={"name": "f", "arguments": {"q": "é", "n": [1]}})])
    assert r.calls[0].arguments == '{"q": "é", "n": [1]}'


def test_missing_arguments_become_an_empty_object() -> None:
    r = run([tc(index=0, id="a", function={"name": "ping"})])
    assert r.calls == [AssembledCall("a", "ping", "{}", 0)]


def test_shells_without_name_or_arguments_are_dropped() -> None:
    r = run([tc(index=0, type="function"), {"tool_calls": [None, 3]}])
    assert r.calls == []
    assert r.deltas == []


def test_a_call_whose_name_never_came_is_kept_with_an_empty_name() -> None:
    r = run([tc(index=0, function={"arguments": '{"x": 1}'})])
    assert [(c.name, c.arguments) for c in r.calls] == [("", '{"x": 1}')]


def test_duplicate_upstream_ids_still_give_unique_ids() -> None:
    r = run(
        [
            tc(id="same", function={"name": "f", "arguments": '{"a": 1}'}),
            tc(id="same", function={"name": "g", "arguments": '{"b": 2}'}),
        ]
    )
    assert named(r.calls) == [("f", {"a": 1}), ("g", {"b": 2})]
    assert r.calls[0].id == "same" and r.calls[1].id != "same"


# ---------------------------------------------------------------------------------------------
# (d) cumulative snapshots


def test_cumulative_snapshots_emit_only_the_new_suffix() -> None:
    snapshots = ['{"city', '{"city": "Lyo', '{"city": "Lyon"}']
    r = Run(ToolCallAssembler())
    r.feed(tc(index=0, id="c", function={"name": "geocode", "arguments": snapshots[0]}))
    r.feed(tc(index=0, function={"arguments": snapshots[1]}))
    out, _ = r.feed(tc(index=0, function={"arguments": snapshots[2]}))
    assert out  # decided before the end: the suffix is relayed at once
    r.feed(tc(index=0, function={"arguments": snapshots[2]}))  # a repeated final snapshot
    r.finish()
    assert r.calls == [AssembledCall("c", "geocode", '{"city": "Lyon"}', 0)]
    assert r.client_view() == [("c", "geocode", '{"city": "Lyon"}')]


def test_cumulative_snapshot_ending_after_a_colon_is_settled_at_the_end() -> None:
    r = run(
        [
            tc(index=0, id="c", function={"name": "f", "arguments": '{"a": '}),
            tc(index=0, function={"arguments": '{"a": 1}'}),
        ]
    )
    assert r.calls[0].arguments == '{"a": 1}'


def test_a_delta_that_happens_to_repeat_the_text_so_far_is_still_a_delta() -> None:
    r = run(
        [
            tc(index=0, id="c", function={"name": "f", "arguments": '{"a": '}),
            tc(index=0, function={"arguments": '{"a": 1}}'}),
        ]
    )
    assert r.calls[0].arguments == '{"a": {"a": 1}}'


def test_once_snapshots_are_recognised_later_calls_stream_without_delay() -> None:
    r = Run(ToolCallAssembler())
    r.feed(tc(index=0, id="a", function={"name": "f", "arguments": '{"x": '}))
    r.feed(tc(index=0, function={"arguments": '{"x": 1, "y": 2'}))  # only snapshots fit
    r.feed(tc(index=0, function={"arguments": '{"x": 1, "y": 2}'}))
    r.feed(tc(index=1, id="b", function={"name": "g", "arguments": '{"z": '}))
    out, _ = r.feed(tc(index=1, function={"arguments": '{"z": 3'}))
    assert out == [{"index": 1, "function": {"arguments": "3"}}]
    r.feed(tc(index=1, function={"arguments": '{"z": 3}'}))
    r.finish()
    assert named(r.calls) == [("f", {"x": 1, "y": 2}), ("g", {"z": 3})]


# ---------------------------------------------------------------------------------------------
# (e) JSON written as content


def test_qwen_json_object_in_content() -> None:
    r = run(
        [
            {"content": '{"name": "get_weather", '},
            {"content": '"arguments": {"latitude": 1, "longitude": 2}}'},
        ]
    )
    assert named(r.calls) == [("get_weather", {"latitude": 1, "longitude": 2})]
    assert GENERATED_ID.match(r.calls[0].id)
    assert r.text == ""


def test_parameters_key_list_of_calls_and_trailing_text() -> None:
    r = run(
        [
            {"content": "\n["},
            {"content": '{"name": "a", "parameters": {"x": 1}},'},
            {"content": ' {"name": "b", "arguments": "{\\"y\\": 2}"}]\n\nChecking now.'},
        ]
    )
    assert named(r.calls) == [("a", {"x": 1}), ("b", {"y": 2})]
    assert r.text == "Checking now."


def test_fenced_json_call() -> None:
    r = run(
        [
            {"content": "```json\n"},
            {"content": '{"name": "f", "arguments": {}}\n`'},
            {"content": "``"},
        ]
    )
    assert named(r.calls) == [("f", {})]
    assert r.text == ""


def test_fenced_call_without_closing_fence_at_end_of_stream() -> None:
    r = run([{"content": '```\n{"name": "f", "arguments": {"k": "v"}}'}])
    assert named(r.calls) == [("f", {"k": "v"})]


def test_openai_style_function_object_in_content() -> None:
    r = run([{"content": '{"type": "function", "function": {"name": "f", "arguments": {}}}'}])
    assert named(r.calls) == [("f", {})]


@pytest.mark.parametrize(
    "content",
    [
        '{"city": "Paris", "population": 2100000}',
        '{"name": "Ada Lovelace"}',
        '{"name": "x", "arguments": {}, "extra": 1}',
        "[1, 2, 3]",
        "{not json at all",
        "{} and more text",
        '```python\nprint("hi")\n```',
        "```json\n[1]\n```",
        "``not a fence",
        "  {",
        "   ",
    ],
)
def test_content_that_is_not_a_call_comes_out_as_text_unchanged(content: str) -> None:
    for pieces in ([content], list(content)):
        r = run([{"content": piece} for piece in pieces])
        assert r.calls == []
        assert r.text == content


def test_json_that_is_clearly_data_is_released_before_the_end() -> None:
    r = Run(ToolCallAssembler())
    _, text = r.feed({"content": '{"city": "Paris", "po'})
    assert text == '{"city": "Paris", "po'
    _, text = r.feed({"content": "[1"})
    assert text == "[1"


def test_plain_text_is_relayed_at_once() -> None:
    r = Run(ToolCallAssembler())
    assert r.feed({"content": "Hello"}) == ([], "Hello")
    assert r.feed({"content": " world, 3 < 4"}) == ([], " world, 3 < 4")
    assert r.feed({"content": "<tool"}) == ([], None)  # might be a tag: held
    assert r.feed({"content": "s>"}) == ([], "<tools>")
    assert r.finish() == ([], None)


def test_tool_names_decide_whether_bare_json_is_a_call() -> None:
    r = run([{"content": '{"name": "get_time"}'}], tool_names=["get_time"])
    assert named(r.calls) == [("get_time", {})]
    r = run([{"content": '{"name": "other", "arguments": {}}'}], tool_names=["get_time"])
    assert r.calls == [] and r.text == '{"name": "other", "arguments": {}}'


# ---------------------------------------------------------------------------------------------
# (f) Hermes tags


def test_hermes_tool_call_tags() -> None:
    r = run(
        [
            {"content": "Let me look.\n<tool_"},
            {"content": 'call>\n{"name": "geocode", "arguments": {"city": "Oslo"}}'},
            {"content": "\n</tool_call>\n"},
            {"content": '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "UTC"}}'},
            {"content": "\n</tool_call>"},
        ]
    )
    assert named(r.calls) == [("geocode", {"city": "Oslo"}), ("get_time", {"timezone": "UTC"})]
    assert r.text == "Let me look.\n"


def test_hermes_tag_left_open_at_end_of_stream() -> None:
    r = run([{"content": '<tool_call>{"name": "f", "arguments": {"a": [1, 2]}}'}])
    assert named(r.calls) == [("f", {"a": [1, 2]})]


def test_hermes_tag_around_garbage_is_text() -> None:
    content = "a <tool_call>not json</tool_call> b <tool_call>{oops"
    r = run([{"content": content}])
    assert r.calls == []
    assert r.text == content


def test_tool_calls_and_text_in_the_same_stream() -> None:
    r = run(
        [
            {"content": "Sure."},
            tc(index=0, id="a", function={"name": "f", "arguments": "{}"}),
            {"content": ' <tool_call>{"name": "g", "arguments": {}}</tool_call>'},
        ]
    )
    assert [c.name for c in r.calls] == ["f", "g"]
    assert r.text == "Sure. "


# ---------------------------------------------------------------------------------------------
# Properties

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=6)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
argument_objects = st.dictionaries(st.text(max_size=4), json_values, max_size=4)


@st.composite
def argument_texts(draw: st.DrawFn) -> str:
    value = draw(argument_objects)
    compact = draw(st.booleans())
    ascii_only = draw(st.booleans())
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(value, separators=separators, ensure_ascii=ascii_only)


@st.composite
def split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = draw(st.lists(st.integers(0, len(text)), max_size=8, unique=True))
    points = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def interleaving(draw: st.DrawFn, a: list[Any], b: list[Any]) -> list[Any]:
    order = draw(st.permutations([0] * len(a) + [1] * len(b)))
    queues = [list(a), list(b)]
    return [queues[i].pop(0) for i in order]


@st.composite
def two_split_calls(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    args = [draw(argument_texts()), draw(argument_texts())]
    return args, [draw(split(args[0])), draw(split(args[1]))]


@settings(deadline=None, max_examples=300)
@given(data=st.data(), calls=two_split_calls())
def test_property_openai_deltas_any_split_any_interleaving(
    data: st.DataObject, calls: tuple[list[str], list[list[str]]]
) -> None:
    args, pieces = calls
    names = ["first_tool", "second_tool"]
    streams = [
        [tc(index=i, id=f"id{i}", type="function", function={"name": names[i], "arguments": ""})]
        + [tc(index=i, function={"arguments": p}) for p in pieces[i]]
        for i in range(2)
    ]
    # Each call's first delta comes before its fragments; the rest interleave freely.
    deltas = data.draw(interleaving(streams[0], streams[1]))
    r = run(deltas)
    got = {c.id: (c.name, c.arguments) for c in r.calls}
    assert got == {"id0": (names[0], args[0]), "id1": (names[1], args[1])}


@settings(deadline=None, max_examples=300)
@given(data=st.data(), calls=two_split_calls())
def test_property_cumulative_snapshots_any_split_any_interleaving(
    data: st.DataObject, calls: tuple[list[str], list[list[str]]]
) -> None:
    args, pieces = calls
    streams = []
    for i in range(2):
        snapshots = ["".join(pieces[i][: k + 1]) for k in range(len(pieces[i]))]
        stream = [tc(index=i, id=f"id{i}", function={"name": f"t{i}", "arguments": snapshots[0]})]
        stream += [tc(index=i, function={"arguments": s}) for s in snapshots[1:]]
        streams.append(stream)
    r = run(data.draw(interleaving(streams[0], streams[1])))
    assert {c.id: c.arguments for c in r.calls} == {"id0": args[0], "id1": args[1]}


@settings(deadline=None, max_examples=200)
@given(args=argument_texts(), data=st.data())
def test_property_llama_cpp_repeated_ids_and_function_call(args: str, data: st.DataObject) -> None:
    pieces = data.draw(split(args))
    deltas = []
    for i, piece in enumerate(pieces):
        function = {"arguments": piece, **({"name": "f"} if i == 0 else {})}
        deltas.append(
            {
                "function_call": dict(function),
                "tool_calls": [
                    {"index": 0, "id": "same", "type": "function", "function": function}
                ],
            }
        )
    r = run(deltas)
    assert r.calls == [AssembledCall("same", "f", args, 0)]


@settings(deadline=None, max_examples=200)
@given(
    args=st.lists(argument_texts(), min_size=1, max_size=3),
    style=st.sampled_from(["object", "fenced", "list", "hermes"]),
    data=st.data(),
)
def test_property_calls_written_as_content_any_split(
    args: list[str], style: str, data: st.DataObject
) -> None:
    objects = [f'{{"name": "tool{i}", "arguments": {a}}}' for i, a in enumerate(args)]
    if style == "object":
        content, expected = objects[0], args[:1]
    elif style == "fenced":
        content, expected = f"```json\n{objects[0]}\n```", args[:1]
    elif style == "list":
        content, expected = "[" + ", ".join(objects) + "]", args
    else:
        content = "Calling.\n" + "\n".join(f"<tool_call>\n{o}\n</tool_call>" for o in objects)
        expected = args
    r = run([{"content": piece} for piece in data.draw(split(content)) if piece])
    assert [c.arguments for c in r.calls] == [
        json.dumps(json.loads(a), ensure_ascii=False) for a in expected
    ]
    assert [c.name for c in r.calls] == [f"tool{i}" for i in range(len(expected))]
    assert r.text == ("Calling.\n" if style == "hermes" else "")


tricky_text = st.lists(
    st.sampled_from(
        [
            "{",
            "}",
            "[",
            "]",
            '"',
            ":",
            ",",
            "name",
            '"name"',
            "arguments",
            "<tool_call>",
            "</tool_call>",
            "<",
            "```",
            "json",
            "\n",
            " ",
            "\\",
            "1",
            "null",
            "x",
            "é",
        ]
    )
    | st.text(max_size=3),
    max_size=30,
).map("".join)


@settings(deadline=None, max_examples=500)
@given(text=st.text() | tricky_text, data=st.data())
def test_property_garbage_content_never_raises_and_is_never_lost(
    text: str, data: st.DataObject
) -> None:
    r = run([{"content": piece} for piece in data.draw(split(text))])
    if not r.calls:
        assert r.text == text


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "index",
                    "id",
                    "function",
                    "name",
                    "arguments",
                    "tool_calls",
                    "content",
                    "function_call",
                    "type",
                ]
            )
            | st.text(max_size=3),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(deadline=None, max_examples=500)
@given(deltas=st.lists(json_like, max_size=6))
def test_property_garbage_deltas_never_raise(deltas: list[Any]) -> None:
    assembler = ToolCallAssembler()
    for delta in deltas:
        out, text = assembler.feed(delta)
        assert isinstance(out, list)
        assert text is None or isinstance(text, str)
    out, text = assembler.finish()
    assert isinstance(out, list)
    for call in assembler.calls:
        assert isinstance(call.arguments, str) and isinstance(call.name, str)
