"""Reading dataset files: both formats in every container, and one clear error per bad input."""

from __future__ import annotations

import json

import pytest

from s2s.data.records import RecordError, read_records

TEXTS = [{"Text": "To be, or not to be"}, {"Text": "that is the question."}]
PAIRS = [
    {"Input": "How <mask> doing?", "Target": "How are you doing?"},
    {"Input": "Thou art", "Target": "You are"},
]


def as_array(records: list) -> str:
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"


def as_jsonl(records: list) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


@pytest.mark.parametrize(
    "container", ["array", "jsonl", "wrapped", "compact_array", "jsonl_blank_lines"]
)
@pytest.mark.parametrize("kind", ["text", "pairs"])
def test_reads_both_formats_in_every_container(write, container, kind):
    records = TEXTS if kind == "text" else PAIRS
    wrapper = "InputTexts" if kind == "text" else "InputTargetPairs"
    content = {
        "array": as_array(records),
        "compact_array": json.dumps(records),
        "jsonl": as_jsonl(records),
        "jsonl_blank_lines": "\n" + as_jsonl(records).replace("\n", "\n\n"),
        "wrapped": json.dumps({wrapper: records}, indent=2),
    }[container]
    got = read_records(write("data.json", content))
    assert got.kind == kind
    assert len(got) == 2
    if kind == "text":
        assert got.inputs == [r["Text"] for r in TEXTS]
        assert got.targets is None
    else:
        assert got.inputs == [r["Input"] for r in PAIRS]
        assert got.targets == [r["Target"] for r in PAIRS]


def test_wrapped_texts_may_be_plain_strings(write):
    got = read_records(write("t.json", json.dumps({"InputTexts": ["a b", "c d"]})))
    assert got.kind == "text" and got.inputs == ["a b", "c d"]


def test_single_object_is_a_one_record_jsonl_file(write):
    got = read_records(write("one.jsonl", json.dumps(PAIRS[0])))
    assert got.kind == "pairs" and got.targets == ["How are you doing?"]


def test_unicode_and_bom_are_read(write):
    text = "Ça va? 世界 🎉"
    got = read_records(write("u.json", "\ufeff" + as_array([{"Text": text}])))
    assert got.inputs == [text]


def test_extra_keys_are_ignored(write):
    got = read_records(write("x.json", as_array([{"Text": "hello there", "id": 7}])))
    assert got.inputs == ["hello there"]


def test_shipped_datasets_read():
    from conftest import REPO

    files = sorted((REPO / "datasets").glob("*/*.json"))
    assert files, "datasets/ holds no .json files"
    for path in files:
        records = read_records(path)
        assert len(records) > 0, path


# -- bad input: (file content, expected record, expected line, words the message must hold)
BAD = {
    "not_json": ("this is plain text\n", None, 1, ["not JSON"]),
    "broken_array": ('[\n{"Text": "a"},\n{"Text": "b"\n]', 2, 3, ["not valid JSON"]),
    "broken_jsonl": ('{"Text": "a"}\n{"Text": b}\n', 2, 2, ["not valid JSON Lines"]),
    "top_level_number": ("42", None, 1, ["not JSON"]),
    "top_level_string": ('"hello"', None, 1, ["not JSON"]),
    "record_not_object": ('[{"Text": "a"}, "b"]', 2, 1, ["expected an object", "a string"]),
    "record_is_array": ('[["a", "b"]]', 1, 1, ["expected an object", "an array"]),
    "wrapper_not_array": ('{"InputTexts": "abc"}', None, None, ["'InputTexts'", "JSON array"]),
    "missing_target": ('[{"Input": "a"}]', 1, 1, ["missing key 'Target'"]),
    "misspelled_target": ('[{"Input": "a", "Targt": "b"}]', 1, 1, ["'Targt'", "'Target'"]),
    "lowercase_text": ('{"text": "a"}\n{"text": "b"}\n', 1, 1, ["'text'", "'Text'"]),
    "no_known_key": ('[{"Foo": "a"}]', 1, 1, ["missing key", "'Foo'"]),
    "misspelled_wrapper": ('{"InputText": ["a"]}', None, None, ["'InputText'", "'InputTexts'"]),
    "null_value": ('[{"Text": "a"}, {"Text": null}]', 2, 1, ["'Text'", "null"]),
    "number_value": ('{"Input": "a", "Target": 3}\n', 1, 1, ["'Target'", "a number"]),
    "empty_text": ('[{"Text": "a"},\n{"Text": "   "}]', 2, 2, ["'Text'", "empty"]),
    "empty_input": ('{"Input": "", "Target": "b"}\n', 1, 1, ["'Input'", "empty"]),
    "mixed_formats": (
        as_array([TEXTS[0], TEXTS[1], PAIRS[0]]),
        3,
        4,
        ["pair", "record 1", "one format"],
    ),
    "mixed_in_one_record": ('[{"Text": "a", "Input": "b", "Target": "c"}]', 1, 1, ["both"]),
    "wrapper_kind_mismatch": (
        json.dumps({"InputTexts": PAIRS}),
        1,
        None,
        ["pair", "'InputTexts'"],
    ),
    "empty_file": ("", None, None, ["empty"]),
    "whitespace_file": ("  \n\n ", None, None, ["empty"]),
    "empty_array": ("[]", None, None, ["no records"]),
    "trailing_garbage": ('[{"Text": "a"}] x', None, 1, ["extra data"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_record_and_problem(write, case):
    content, record, line, words = BAD[case]
    path = write(f"{case}.json", content)
    with pytest.raises(RecordError) as info:
        read_records(path)
    err = info.value
    message = str(err)
    assert message.startswith(f"{path}: "), message
    assert err.record == record, message
    assert err.line == line, message
    if record is not None:
        assert f"record {record}" in message
    if line is not None:
        assert f"line {line}" in message
    for word in words:
        assert word in message, (word, message)
    assert "\n" not in message


def test_invalid_utf8_names_byte_and_line(write):
    path = write("latin1.json", b'[\n{"Text": "caf\xe9"}\n]')
    with pytest.raises(RecordError) as info:
        read_records(path)
    assert info.value.line == 2
    assert str(info.value).startswith(f"{path}: ")
    assert "invalid UTF-8 at byte offset 15" in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        read_records(tmp_path / "nope.json")
    with pytest.raises(RecordError, match="is a directory"):
        read_records(tmp_path)


def test_record_error_is_a_value_error(write):
    # Callers (CLI, data module) catch ValueError to print one line and exit non-zero.
    with pytest.raises(ValueError):
        read_records(write("e.json", ""))
