"""Read and validate dataset files.

Two record formats, each in three containers:

    text records   {"Text": "..."}                      (noised by the data module)
    pair records   {"Input": "How <mask> doing?", "Target": "How are you doing?"}

    a JSON array              [ {...}, {...} ]
    JSON Lines                one object a line
    an object-wrapped array   {"InputTexts": [...]} or {"InputTargetPairs": [...]}

Every problem raises one `RecordError` whose message names the file, the record (1-based) and,
where known, its line, and says what is wrong: the data module never sees a malformed record,
so no bare `KeyError` can surface from deep inside training.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TEXT_KEY = "Text"
INPUT_KEY = "Input"
TARGET_KEY = "Target"
WRAPPER_KEYS = {"InputTexts": "text", "InputTargetPairs": "pairs"}
RecordKind = Literal["text", "pairs"]


class RecordError(ValueError):
    """A dataset file or one of its records is malformed.

    `path`, `record` (1-based, or None for file-level problems) and `line` (1-based, or None)
    locate the problem; `str(error)` is a complete one-line message for the user.
    """

    def __init__(
        self, path: Path, what: str, *, record: int | None = None, line: int | None = None
    ) -> None:
        self.path, self.record, self.line, self.what = path, record, line, what
        where = ""
        if record is not None:
            where = f"record {record}" + (f" (line {line})" if line is not None else "") + ": "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(f"{path}: {where}{what}")


@dataclass(frozen=True)
class Records:
    """The validated contents of one dataset file.

    `inputs` holds the Text of text records or the Input of pair records; `targets` holds the
    Target of pair records and is None for text records.
    """

    path: Path
    kind: RecordKind
    inputs: list[str]
    targets: list[str] | None

    def __len__(self) -> int:
        return len(self.inputs)


def read_records(path: str | Path) -> Records:
    """Read a dataset file in any supported format and container; raise `RecordError` if bad."""
    path = Path(path)
    text = _read_text(path)
    items, wrapper_kind = _parse_container(path, text)
    return _validate(path, items, wrapper_kind)


def read_bytes(path: Path) -> bytes:
    """The bytes of a file; missing, a directory or unreadable (permissions, I/O) is a
    `RecordError` naming it."""
    if not path.exists():
        raise RecordError(path, "file not found")
    if path.is_dir():
        raise RecordError(path, "is a directory, expected a .json or .jsonl file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise RecordError(path, f"cannot read the file ({err.strerror or err})") from None


def decode_utf8(path: Path, raw: bytes) -> str:
    """`raw` as text (a byte-order mark tolerated); invalid UTF-8 is a `RecordError`."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise RecordError(
            path, f"invalid UTF-8 at byte offset {err.start}; save the file as UTF-8", line=line
        ) from None


def _read_text(path: Path) -> str:
    text = decode_utf8(path, read_bytes(path))
    if not text.strip():
        raise RecordError(path, "file is empty; expected a JSON array of records or JSON Lines")
    return text


# (value, 1-based line or None) for every record, in file order.
_Items = list[tuple[Any, int | None]]


def _parse_container(path: Path, text: str) -> tuple[_Items, RecordKind | None]:
    """Split a file into raw record values; also return the kind a wrapper object demands."""
    start = len(text) - len(text.lstrip())
    first = text[start]
    if first == "[":
        return _scan_array(path, text, start), None
    if first != "{":
        raise RecordError(
            path,
            f"not JSON: the file starts with {first!r}; expected a JSON array of records, "
            'an object like {"InputTexts": [...]}, or JSON Lines (one object a line)',
            line=text.count("\n", 0, start) + 1,
        )
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return _parse_jsonl(path, text), None  # several top-level objects: JSON Lines
    wrappers = [key for key in WRAPPER_KEYS if key in whole]
    if not wrappers:
        _check_not_misspelled_wrapper(path, whole)
        return [(whole, _line_of(text, start))], None  # a one-line JSON Lines file
    if len(wrappers) > 1:
        raise RecordError(
            path, f"the top-level object has both {wrappers[0]!r} and {wrappers[1]!r}"
        )
    key = wrappers[0]
    items = whole[key]
    if not isinstance(items, list):
        raise RecordError(path, f"{key!r} must be a JSON array, got {_type_name(items)}")
    return [(item, None) for item in items], WRAPPER_KEYS[key]


def _check_not_misspelled_wrapper(path: Path, whole: dict) -> None:
    if any(key in whole for key in (TEXT_KEY, INPUT_KEY, TARGET_KEY)):
        return
    lowered = {k.lower(): k for k in WRAPPER_KEYS}
    for key in whole:
        close = difflib.get_close_matches(str(key).lower(), list(lowered), n=1, cutoff=0.75)
        if close:
            wanted = lowered[close[0]]
            raise RecordError(path, f"unknown top-level key {key!r}: did you mean {wanted!r}?")


def _line_of(text: str, index: int) -> int:
    """1-based line number of character `index` of `text`."""
    return text.count("\n", 0, index) + 1


def _scan_array(path: Path, text: str, start: int) -> _Items:
    """Decode a top-level JSON array element by element, keeping each element's line."""
    decoder = json.JSONDecoder()
    items: _Items = []
    index = _skip_space(text, start + 1)
    line, counted_to = _line_of(text, index), index  # lines counted incrementally: O(n)
    if index < len(text) and text[index] == "]":
        index += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, index)
            except json.JSONDecodeError as err:
                raise RecordError(
                    path,
                    f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
                    record=len(items) + 1,
                    line=_line_of(text, index),
                ) from None
            line += text.count("\n", counted_to, index)
            counted_to = index
            items.append((value, line))
            index = _skip_space(text, end)
            if index < len(text) and text[index] == ",":
                index = _skip_space(text, index + 1)
                continue
            if index < len(text) and text[index] == "]":
                index += 1
                break
            raise RecordError(
                path,
                "not valid JSON: expected ',' or ']' after the record",
                record=len(items),
                line=_line_of(text, index),
            )
    if _skip_space(text, index) != len(text):
        raise RecordError(
            path, "not valid JSON: extra data after the array", line=_line_of(text, index)
        )
    return items


def _parse_jsonl(path: Path, text: str) -> _Items:
    items: _Items = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((json.loads(line), line_number))
        except json.JSONDecodeError as err:
            raise RecordError(
                path,
                f"not valid JSON Lines: {err.msg} (column {err.colno})",
                record=len(items) + 1,
                line=line_number,
            ) from None
    return items


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _validate(path: Path, items: _Items, wrapper_kind: RecordKind | None) -> Records:
    if not items:
        raise RecordError(path, "holds no records")
    inputs: list[str] = []
    targets: list[str] = []
    kind: RecordKind | None = wrapper_kind
    first_seen: int | None = None
    for number, (item, line) in enumerate(items, start=1):
        if wrapper_kind == "text" and isinstance(item, str):
            item = {TEXT_KEY: item}  # {"InputTexts": ["a", "b"]} is accepted too
        item_kind = _record_kind(path, item, number, line)
        if kind is None:
            kind, first_seen = item_kind, number
        elif item_kind != kind:
            raise RecordError(
                path, _mixed_message(item_kind, kind, first_seen), record=number, line=line
            )
        if item_kind == "text":
            inputs.append(_field(path, item, TEXT_KEY, number, line))
        else:
            inputs.append(_field(path, item, INPUT_KEY, number, line))
            targets.append(_field(path, item, TARGET_KEY, number, line))
    assert kind is not None
    return Records(
        path=path, kind=kind, inputs=inputs, targets=targets if kind == "pairs" else None
    )


def _record_kind(path: Path, item: Any, number: int, line: int | None) -> RecordKind:
    if not isinstance(item, dict):
        raise RecordError(
            path,
            f'expected an object like {{"Text": ...}} or {{"Input": ..., "Target": ...}}, '
            f"got {_type_name(item)}",
            record=number,
            line=line,
        )
    has_text = TEXT_KEY in item
    has_pair = INPUT_KEY in item or TARGET_KEY in item
    if has_text and has_pair:
        raise RecordError(
            path,
            f"has both {TEXT_KEY!r} and {INPUT_KEY!r}/{TARGET_KEY!r}; use one format",
            record=number,
            line=line,
        )
    if has_text:
        return "text"
    if has_pair:
        for key in (INPUT_KEY, TARGET_KEY):
            if key not in item:
                raise RecordError(path, _missing_message(item, key), record=number, line=line)
        return "pairs"
    raise RecordError(path, _missing_message(item, None), record=number, line=line)


def _field(path: Path, item: dict, key: str, number: int, line: int | None) -> str:
    value = item[key]
    if value is None:
        raise RecordError(
            path, f"field {key!r} is null; expected a string", record=number, line=line
        )
    if not isinstance(value, str):
        raise RecordError(
            path,
            f"field {key!r} must be a string, got {_type_name(value)}",
            record=number,
            line=line,
        )
    if not value.strip():
        raise RecordError(path, f"field {key!r} is empty", record=number, line=line)
    return value


def _missing_message(item: dict, key: str | None) -> str:
    """Say which key is missing and, when a present key looks like a misspelling, which one."""
    wanted = [key] if key else [TEXT_KEY, INPUT_KEY, TARGET_KEY]
    present = [str(k) for k in item]
    for want in wanted:
        close = difflib.get_close_matches(want, present, n=1, cutoff=0.6)
        close += [k for k in present if k.lower() == want.lower() and k not in close]
        if close:
            return f"unknown key {close[0]!r}: did you mean {want!r}?"
    found = ", ".join(repr(k) for k in present) or "no keys"
    if key:
        return f"missing key {key!r} (found {found})"
    return (
        f"missing key: expected {TEXT_KEY!r}, or {INPUT_KEY!r} and {TARGET_KEY!r} (found {found})"
    )


def _mixed_message(kind: RecordKind, expected: RecordKind, first_seen: int | None) -> str:
    names = {"text": f"a {TEXT_KEY!r} record", "pairs": f"an {INPUT_KEY!r}/{TARGET_KEY!r} pair"}
    if first_seen is None:  # the wrapper key fixed the format
        wrapper = next(k for k, v in WRAPPER_KEYS.items() if v == expected)
        return f"is {names[kind]}, but the file wraps its records in {wrapper!r}"
    return (
        f"is {names[kind]}, but record {first_seen} is {names[expected]}; "
        "a file must hold one format only"
    )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)
