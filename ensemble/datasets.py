"""QA data files: read them into validated `QAExample`s, split KorQuAD, read and write prediction files.

Formats read (UTF-8, with or without a BOM):
- SQuAD/KorQuAD JSON: `data[].title`, `data[].paragraphs[].context`,
  `data[].paragraphs[].qas[].id/.question/.answers[].text/.answer_start`.
- CSV with a header naming at least `id,context,question` (the competition's layout), optionally `answer`
  or `answers` and `title`; other columns are ignored; header names match case-insensitively. `answer` holds
  one gold answer verbatim. `answers` holds one answer too, unless the cell starts with "[": then it must be
  a JSON list of strings, e.g. `["2월 15일", "15일"]`. An empty answer cell means no gold answer.
- JSON Lines: one object per line with the same keys; `answer` is a string, `answers` a list of strings, a
  list of `{"text", "answer_start"}` objects (SQuAD) or `{"text": [...], "answer_start": [...]}` (Hugging
  Face).
An `id` may be a JSON integer; it becomes a string.

Every reader validates the whole input before returning anything: a bad file raises `DataFormatError` and no
partial result escapes. `DataFormatError.row` is 1-based and means:
- CSV: the spreadsheet row, the header being row 1 (a quoted cell spanning several lines is still one row);
- JSON Lines: the line number;
- SQuAD JSON: the question's position in file order (the message also gives its path in the document);
- `parse_rows`: the position in the sequence.

JSON is read through `bounded_json` (nesting and integer length bounded), so no input raises anything but
`DataFormatError`. This module does not score answers (see `ensemble.metric`), fetch data, or import torch.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from hashlib import md5
from pathlib import Path
from typing import Literal, TextIO, cast

import bounded_json

Format = Literal["auto", "squad", "csv", "jsonl"]
Source = str | os.PathLike[str] | bytes
# (row number, raw fields, location prefix for messages)
_Rows = Iterator[tuple[int, Mapping[str, object], str]]

_EXTENSIONS = {".json": "squad", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_REQUIRED = ("id", "context", "question")
_JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object", type(None): "null"}


class DataFormatError(ValueError):
    """A data file or row set that cannot be read; `row` and `field` locate the problem (see the module
    docstring for what `row` counts). `line` is the text line where that is more useful (JSON, bad bytes)."""

    def __init__(self, detail: str, *, row: int | None = None, field: str | None = None,
                 line: int | None = None) -> None:
        where = [f"row {row}"] if row is not None else []
        if line is not None and line != row:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {detail}" if where else detail)
        self.row = row
        self.field = field
        self.line = line
        self.detail = detail


@dataclass(frozen=True)
class QAExample:
    """One extractive question over a context."""

    id: str
    context: str
    question: str
    answers: tuple[str, ...]
    """Gold answers; empty when the file has none (e.g. a competition test set)."""
    title: str | None = None
    """The article title; KorQuAD splits by it."""
    answer_starts: tuple[int, ...] = ()
    """Character offsets of `answers` in `context` when the file gives them, else empty."""

    def __post_init__(self) -> None:
        if self.answer_starts and len(self.answer_starts) != len(self.answers):
            raise ValueError("answer_starts must be empty or one per answer")


def load_examples(path_or_bytes: Source, *, format: Format = "auto", filename: str | None = None,
                  max_rows: int | None = None) -> list[QAExample]:
    """Read a data file (a path, or the bytes of an upload named `filename`) into validated examples.

    `format="auto"` goes by the extension (.json, .jsonl/.ndjson, .csv), else by the first non-space
    character: "{" or "[" is JSON (JSON Lines when the first line is a whole object without "data"), anything
    else CSV. A `str` is a path, never file content.
    Raises DataFormatError on any problem, including more than `max_rows` questions.
    """
    text, name = _read_text(path_or_bytes)
    chosen = _detect_format(text, filename or name) if format == "auto" else format
    readers: dict[str, Callable[[str], _Rows]] = {
        "squad": _squad_rows, "csv": _csv_rows, "jsonl": _jsonl_rows}
    if chosen not in readers:
        raise ValueError(f"unknown format {format!r}; expected auto, squad, csv or jsonl")
    return _collect(readers[chosen](text), max_rows)


def parse_rows(rows: Sequence[Mapping[str, object]], *, max_rows: int | None = None) -> list[QAExample]:
    """Validate rows already decoded from JSON (same keys and rules as a JSON Lines file)."""
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
        raise DataFormatError(f"expected a list of row objects, got {_json_type(rows)}")

    def numbered() -> _Rows:
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, Mapping):
                raise DataFormatError(f"expected an object, got {_json_type(row)}", row=n)
            yield n, row, ""

    return _collect(numbered(), max_rows)


def korquad_split(title: str) -> Literal["train", "eval"]:
    """The project's fixed article split (shared/data/README.md).

    Never change it: eval articles would leak into training and past results would stop being comparable.
    """
    return "eval" if int(md5(title.encode("utf-8")).hexdigest(), 16) % 10 >= 7 else "train"


def load_korquad(path: str | os.PathLike[str], split: Literal["train", "eval", "all"]) -> list[QAExample]:
    """The questions of a KorQuAD-layout JSON file whose article is in `split` (by `korquad_split(title)`)."""
    if split not in ("train", "eval", "all"):
        raise ValueError(f"unknown split {split!r}; expected train, eval or all")
    examples = load_examples(path, format="squad")
    for n, example in enumerate(examples, start=1):
        if example.title is None:
            raise DataFormatError(f"question {example.id!r} has no article title to split by",
                                  row=n, field="title")
    return [ex for ex in examples if split == "all" or korquad_split(ex.title or "") == split]


def write_predictions_csv(rows: Iterable[tuple[str, str]], fh: TextIO) -> None:
    """Write a competition submission: header `id,answer`, one row per question, CSV quoting where needed.

    Open `fh` with `newline=""`. Everything is checked before the first byte is written.
    """
    # Numbered from 2 because the header is row 1, as when the file is read back.
    predictions = _predictions((n, {"id": qid, "answer": answer})
                               for n, (qid, answer) in enumerate(rows, start=2))
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(("id", "answer"))
    writer.writerows(predictions.items())


def read_predictions(path_or_bytes: Source, *, max_rows: int | None = None) -> dict[str, str]:
    """Read predictions from a `{id: answer}` JSON object or an `id,answer` CSV (rows counted as for CSV)."""
    text, _ = _read_text(path_or_bytes)
    if not text.lstrip().startswith("{"):
        return _predictions(_csv_records(text, ("id", "answer")), max_rows)
    # With this hook the top level (an object: the text starts with "{") arrives as its (key, value) pairs,
    # so a repeated id is seen instead of json.loads silently keeping the last answer.
    pairs = cast(list[tuple[str, object]], _parse_json(text, object_pairs_hook=list))
    return _predictions(((n, {"id": key, "answer": value}) for n, (key, value) in enumerate(pairs, start=1)),
                        max_rows)


def _predictions(rows: Iterable[tuple[int, Mapping[str, object]]],
                 max_rows: int | None = None) -> dict[str, str]:
    predictions: dict[str, str] = {}
    first_row: dict[str, int] = {}
    for n, row in rows:
        if max_rows is not None and len(predictions) >= max_rows:
            raise DataFormatError(f"more than {max_rows} rows (limit {max_rows})", row=n)
        qid, answer = row["id"], row["answer"]
        if not isinstance(qid, str) or not qid.strip():
            raise DataFormatError("id must be a non-empty string", row=n, field="id")
        if not isinstance(answer, str):
            raise DataFormatError(f"expected a string, got {_json_type(answer)}", row=n, field="answer")
        if qid in first_row:
            raise DataFormatError(f"duplicate id {qid!r} (rows {first_row[qid]} and {n})", row=n, field="id")
        first_row[qid] = n
        predictions[qid] = answer
    return predictions


# --- decoding and format detection ----------------------------------------------------------------

def _read_text(source: Source) -> tuple[str, str | None]:
    """The decoded text and, for a path, the file name."""
    if isinstance(source, bytes):
        data, name = source, None
    else:
        data, name = Path(source).read_bytes(), Path(source).name
    text = _decode(data)
    if not text.strip():
        raise DataFormatError("the file is empty")
    return text, name


def _decode(data: bytes) -> str:
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start
        line = data[:offset].count(b"\n") + 1
        raise DataFormatError(f"not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset}; "
                              "save the file as UTF-8", line=line) from e


def _detect_format(text: str, name: str | None) -> str:
    suffix = Path(name).suffix.lower() if name else ""
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    stripped = text.lstrip()
    if stripped[0] not in "{[":
        return "csv"
    try:
        first = bounded_json.loads(stripped.split("\n", 1)[0])
    except json.JSONDecodeError:
        return "squad"  # a pretty-printed document: its first line is not a whole value
    return "jsonl" if isinstance(first, dict) and "data" not in first else "squad"


def _parse_json(text: str, **kwargs: object) -> object:
    try:
        return bounded_json.loads(text, **kwargs)
    except json.JSONDecodeError as e:
        hint = "; one object per line is JSON Lines (use .jsonl)" if e.msg == "Extra data" else ""
        raise DataFormatError(f"malformed JSON: {e.msg} at column {e.colno}{hint}",
                              line=e.lineno) from e


# --- the three layouts, each yielding raw rows for _collect ---------------------------------------

def _squad_rows(text: str) -> _Rows:
    doc = _parse_json(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataFormatError('expected a SQuAD-layout object {"data": [{"title", "paragraphs": [...]}]}',
                              field="data")
    n = 0
    for a, article in enumerate(doc["data"]):
        title = _member(article, "title", f"data[{a}]", required=False)
        if title is not None and not isinstance(title, str):
            raise DataFormatError(f"data[{a}]: expected a string, got {_json_type(title)}", field="title")
        for p, paragraph in enumerate(_list_member(article, "paragraphs", f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _member(paragraph, "context", where)
            for q, qa in enumerate(_list_member(paragraph, "qas", where)):
                n += 1
                if not isinstance(qa, dict):
                    raise DataFormatError(f"{where}.qas[{q}]: expected an object, got {_json_type(qa)}",
                                          row=n)
                row = {"id": qa.get("id"), "context": context, "question": qa.get("question"), "title": title,
                       "answers": qa.get("answers")}
                yield n, row, f"{where}.qas[{q}] (id {qa.get('id')!r}): "


def _member(obj: object, key: str, where: str, *, required: bool = True) -> object:
    if not isinstance(obj, dict):
        raise DataFormatError(f"{where}: expected an object, got {_json_type(obj)}")
    if required and key not in obj:
        raise DataFormatError(f"{where}: missing", field=key)
    return obj.get(key)


def _list_member(obj: object, key: str, where: str) -> list[object]:
    value = _member(obj, key, where)
    if not isinstance(value, list):
        raise DataFormatError(f"{where}: expected an array, got {_json_type(value)}", field=key)
    return value


def _csv_rows(text: str) -> _Rows:
    for n, record in _csv_records(text, _REQUIRED):
        row: dict[str, object] = dict(record)
        cell = record.get("answers", "")
        if cell.lstrip().startswith("["):
            try:
                row["answers"] = bounded_json.loads(cell)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"a cell starting with '[' must be a JSON list: {e.msg}",
                                      row=n, field="answers") from e
        yield n, row, ""


def _csv_records(text: str, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file as {lower-cased header: cell}, numbered as a spreadsheet shows them (header = 1)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    n = 0
    names: list[str] = []
    try:
        for record in reader:
            n += 1
            if n == 1:
                names = [name.strip().lower() for name in record]
                _check_header(names, required)
            elif not record:
                continue  # a blank line; csv gives [] for it, and it still counts as a spreadsheet row
            elif len(record) != len(names):
                raise DataFormatError(
                    f"expected {len(names)} columns ({','.join(names)}), found {len(record)}", row=n)
            else:
                yield n, dict(zip(names, record, strict=True))
    except csv.Error as e:
        raise DataFormatError(f"malformed CSV: {e}", row=n + 1) from e


def _check_header(names: list[str], required: Sequence[str]) -> None:
    for i, name in enumerate(names):
        if name in names[:i]:
            raise DataFormatError(f"duplicate column {name!r} in the header", row=1, field=name)
    missing = [name for name in required if name not in names]
    if missing:
        raise DataFormatError(f"missing required column(s) {', '.join(missing)}; the header has "
                              f"{', '.join(names) or 'no names'} and needs {', '.join(required)}",
                              row=1, field=missing[0])


def _jsonl_rows(text: str) -> _Rows:
    # Split on "\n" only: str.splitlines would also split at U+2028, which JSON allows unescaped in strings.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = bounded_json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"malformed JSON Lines: {e.msg} at column {e.colno}", row=n) from e
        if not isinstance(obj, dict):
            raise DataFormatError(f"expected a JSON object, got {_json_type(obj)}", row=n)
        yield n, obj, ""


# --- validation shared by every layout ------------------------------------------------------------

def _collect(rows: _Rows, max_rows: int | None) -> list[QAExample]:
    examples: list[QAExample] = []
    first_row: dict[str, int] = {}
    for n, row, where in rows:
        if max_rows is not None and len(examples) >= max_rows:
            raise DataFormatError(f"more than {max_rows} rows (limit {max_rows})", row=n)
        example = _example(row, n, where)
        if example.id in first_row:
            rows_text = f"rows {first_row[example.id]} and {n}"
            raise DataFormatError(f"{where}duplicate id {example.id!r} ({rows_text})", row=n, field="id")
        first_row[example.id] = n
        examples.append(example)
    return examples


def _example(row: Mapping[str, object], n: int, where: str) -> QAExample:
    def fail(detail: str, field: str) -> DataFormatError:
        return DataFormatError(where + detail, row=n, field=field)

    values: dict[str, str] = {}
    for field in _REQUIRED:
        value = row.get(field)
        if field == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is None:
            raise fail("missing", field)
        if not isinstance(value, str):
            raise fail(f"expected a string, got {_json_type(value)}", field)
        if not value.strip():
            raise fail("empty", field)
        values[field] = value
    title = row.get("title")
    if title is not None and not isinstance(title, str):
        raise fail(f"expected a string, got {_json_type(title)}", "title")
    if "answer" in row and "answers" in row:
        raise fail("give either 'answer' or 'answers', not both", "answers")
    field = "answers" if "answers" in row else "answer"
    answers, starts = _answers(row.get(field), values["context"], lambda detail: fail(detail, field))
    return QAExample(id=values["id"], context=values["context"], question=values["question"], answers=answers,
                     title=title or None, answer_starts=starts)


def _answers(value: object, context: str,
             fail: Callable[[str], DataFormatError]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return (), ()
    if isinstance(value, str):
        return (value,), ()
    pairs: list[tuple[object, object]]
    if isinstance(value, Mapping):  # Hugging Face datasets: {"text": [...], "answer_start": [...]}
        hf_texts, hf_starts = value.get("text"), value.get("answer_start")
        if hf_starts is None and isinstance(hf_texts, list):
            hf_starts = [None] * len(hf_texts)
        if not (isinstance(hf_texts, list) and isinstance(hf_starts, list)
                and len(hf_starts) == len(hf_texts)):
            raise fail('expected {"text": [...], "answer_start": [...]} with lists of equal length')
        pairs = list(zip(hf_texts, hf_starts, strict=True))
    elif isinstance(value, list):
        pairs = [(item.get("text"), item.get("answer_start")) if isinstance(item, Mapping) else (item, None)
                 for item in value]
    else:
        raise fail(f"expected a string or an array, got {_json_type(value)}")
    texts: list[str] = []
    starts: list[int] = []
    for i, (text, start) in enumerate(pairs, start=1):
        if not isinstance(text, str):
            raise fail(f"answer {i}: expected a string, got {_json_type(text)}")
        if not text.strip():
            raise fail(f"answer {i}: empty")
        texts.append(text)
        if start is None:
            continue
        # An offset that misses its text means a broken file (byte offsets, a re-cleaned context): refuse it.
        if not isinstance(start, int) or isinstance(start, bool) or start < 0 \
                or context[start:start + len(text)] != text:
            raise fail(f"answer {i}: answer_start {start!r} does not point at {text!r} in the context")
        starts.append(start)
    if starts and len(starts) != len(texts):
        raise fail("answer_start given for some answers but not all")
    return tuple(texts), tuple(starts)


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)
