"""Reading QA data files (SQuAD JSON, CSV, JSON Lines), the fixed KorQuAD split and prediction files.

The fixtures tests/fixtures/news_qa.* are invented news text with the same four questions in each layout.
"""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path

import pytest

from ensemble.datasets import (
    DataFormatError,
    QAExample,
    korquad_split,
    load_examples,
    load_korquad,
    parse_rows,
    read_predictions,
    write_predictions_csv,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LAYOUTS = ["news_qa.json", "news_qa.csv", "news_qa.jsonl"]
KORQUAD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "korquad"
needs_korquad = pytest.mark.skipif(not (KORQUAD / "KorQuAD_v1.0_dev.json").is_file(),
                                   reason="shared KorQuAD data not present")

EXPECTED = [("news-001", "420억 원"), ("news-002", "박서윤"), ("news-003", "18%"), ("news-004", "누리칩")]
HEADER = "id,context,question,answer\n"


def _core(examples: list[QAExample]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    return [(ex.id, ex.context, ex.question, ex.answers) for ex in examples]


def _error(data: bytes | list[dict[str, object]], **kwargs: object) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        if isinstance(data, list):
            parse_rows(data, **kwargs)  # type: ignore[arg-type]
        else:
            load_examples(data, **kwargs)  # type: ignore[arg-type]
    return info.value


# --- the three layouts ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_reads_the_same_questions(name: str) -> None:
    examples = load_examples(FIXTURES / name)
    assert [(ex.id, ex.answers[0]) for ex in examples] == EXPECTED
    assert all(ex.answers[0] in ex.context for ex in examples)
    assert _core(examples) == _core(load_examples(FIXTURES / "news_qa.json"))


def test_squad_layout_keeps_titles_and_answer_starts() -> None:
    first = load_examples(FIXTURES / "news_qa.json")[0]
    assert first.title == "해담시 수변공원 개장"
    assert first.context[first.answer_starts[0]:].startswith("420억 원")


def test_csv_ignores_extra_columns_and_keeps_multiline_cells() -> None:
    examples = load_examples(FIXTURES / "news_qa.csv")
    assert "\n" in examples[2].context
    assert examples[0].title is None and examples[0].answer_starts == ()


@pytest.mark.parametrize("name", LAYOUTS)
def test_bom_and_sniffing_without_a_filename(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    expected = _core(load_examples(FIXTURES / name))
    assert _core(load_examples(codecs.BOM_UTF8 + data)) == expected
    assert _core(load_examples(data, filename="upload.txt")) == expected


def test_csv_answers_column_takes_a_json_list_or_one_answer() -> None:
    data = ('id,context,question,answers\n'
            'a,해담시 시장은 박서윤이다.,시장은?,"[""박서윤"", ""박서윤이""]"\n'
            'b,해담시 시장은 박서윤이다.,시장은?,박서윤\n'
            'c,해담시 시장은 박서윤이다.,시장은?,\n').encode()
    assert [ex.answers for ex in load_examples(data)] == [("박서윤", "박서윤이"), ("박서윤",), ()]


def test_jsonl_accepts_squad_and_hugging_face_answers() -> None:
    context = "청솔전자는 누리칩을 만든다."
    squad_style = [{"text": "누리칩", "answer_start": 6}]
    hugging_face_style = {"text": ["청솔전자"], "answer_start": [0]}
    rows: list[dict[str, object]] = [
        {"id": 1, "context": context, "question": "제품은?", "answers": squad_style},
        {"id": "2", "context": context, "question": "회사는?", "answers": hugging_face_style},
    ]
    data = "\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode()
    examples = load_examples(data, format="jsonl")
    assert [(ex.id, ex.answers, ex.answer_starts) for ex in examples] == [
        ("1", ("누리칩",), (6,)), ("2", ("청솔전자",), (0,))]
    assert examples == parse_rows(rows)


# --- bad files: every error names where -----------------------------------------------------------

def test_not_utf8_gives_the_byte_offset() -> None:
    err = _error((HEADER + "a,문맥,질문,답\n").encode("cp949"))
    assert (err.row, err.field, err.line) == (None, None, 2)
    assert f"byte offset {len(HEADER) + 2}" in str(err)


def test_csv_wrong_column_count() -> None:
    err = _error((HEADER + "a,문맥,질문,답\nb,문맥,질문,답,남는 칸\n").encode())
    assert (err.row, err.field) == (3, None)
    assert "expected 4 columns" in str(err) and "found 5" in str(err)


def test_csv_bad_quoting() -> None:
    err = _error((HEADER + 'a,"문맥"뒤,질문,답\n').encode())
    assert (err.row, err.field) == (2, None)
    assert "malformed CSV" in str(err)


def test_csv_missing_columns_are_named() -> None:
    err = _error("id,text,answer\na,문맥,답\n".encode())
    assert (err.row, err.field) == (1, "context")
    assert "context, question" in str(err)


def test_malformed_json_gives_the_line() -> None:
    err = _error(b'{"data": [\n  {"title": "x",\n  }\n]}', format="squad")
    assert (err.row, err.field, err.line) == (None, None, 3)


def test_jsonl_bad_line_is_the_row() -> None:
    good = json.dumps({"id": "a", "context": "문맥", "question": "질문"}, ensure_ascii=False)
    err = _error(f"{good}\n\n{{\"id\": \"b\",\n".encode(), format="jsonl")
    assert (err.row, err.field) == (3, None)


@pytest.mark.parametrize("cell", ["", "   "])
def test_csv_empty_id(cell: str) -> None:
    err = _error((HEADER + f"a,문맥,질문,답\n{cell},문맥,질문,답\n").encode())
    assert (err.row, err.field) == (3, "id")


def test_squad_empty_question_names_the_question() -> None:
    doc = {"data": [{"title": "t", "paragraphs": [{"context": "문맥", "qas": [
        {"id": "q1", "question": "질문", "answers": []}, {"id": "q2", "question": " ", "answers": []}]}]}]}
    err = _error(json.dumps(doc).encode())
    assert (err.row, err.field) == (2, "question")
    assert "data[0].paragraphs[0].qas[1]" in str(err) and "'q2'" in str(err)


def test_duplicate_ids_name_both_rows() -> None:
    err = _error((HEADER + "a,문맥,질문,답\nb,문맥,질문,답\na,문맥,질문,답\n").encode())
    assert (err.row, err.field) == (4, "id")
    assert "rows 2 and 4" in str(err)


def test_too_many_rows() -> None:
    err = _error(FIXTURES.joinpath("news_qa.csv").read_bytes(), max_rows=3)
    assert (err.row, err.field) == (5, None)
    assert "limit 3" in str(err)


def test_answer_start_must_point_at_the_answer() -> None:
    answers = [{"text": "시장", "answer_start": 0}]  # "시장" starts at 4
    err = _error([{"id": "a", "context": "해담시 시장", "question": "q", "answers": answers}])
    assert (err.row, err.field) == (1, "answers")


@pytest.mark.parametrize(("row", "field"), [
    ({"id": True, "context": "문맥", "question": "질문"}, "id"),
    ({"id": "a", "context": ["문맥"], "question": "질문"}, "context"),
    ({"id": "a", "context": "문맥"}, "question"),
    ({"id": "a", "context": "문맥", "question": "질문", "answers": 3}, "answers"),
    ({"id": "a", "context": "문맥", "question": "질문", "answer": "답", "answers": ["답"]}, "answers"),
])
def test_parse_rows_wrong_types(row: dict[str, object], field: str) -> None:
    err = _error([{"id": "ok", "context": "문맥", "question": "질문"}, row])
    assert (err.row, err.field) == (2, field)


# --- the fixed KorQuAD split ----------------------------------------------------------------------

@needs_korquad
def test_korquad_dev_split_sizes() -> None:
    sizes = {}
    for split in ("train", "eval"):
        examples = load_korquad(KORQUAD / "KorQuAD_v1.0_dev.json", split)
        sizes[split] = (len({ex.title for ex in examples}), len(examples))
        assert {korquad_split(ex.title or "") for ex in examples} == {split}
    assert sizes == {"train": (98, 4264), "eval": (42, 1510)}
    assert len(load_korquad(KORQUAD / "KorQuAD_v1.0_dev.json", "all")) == 5774


# --- prediction files -----------------------------------------------------------------------------

def test_predictions_csv_round_trip_with_quoting() -> None:
    rows = [("news-001", "420억 원, 3년"), ("news-002", '"시민 누구나"'),
            ("news-003", "18%\n증가"), ("news-004", "")]
    fh = io.StringIO(newline="")
    write_predictions_csv(rows, fh)
    text = fh.getvalue()
    assert text.startswith("id,answer\nnews-001,\"420억 원, 3년\"\n")
    assert read_predictions(text.encode()) == dict(rows)


def test_predictions_json_and_duplicates() -> None:
    assert read_predictions('{"a": "박서윤", "b": "18%"}'.encode()) == {"a": "박서윤", "b": "18%"}
    err = _predictions_error(b'{"a": "x", "b": "y", "a": "z"}')
    assert (err.row, err.field) == (3, "id") and "rows 1 and 3" in str(err)
    err = _predictions_error(b"id,answer\na,x\nb,y\na,z\n")
    assert (err.row, err.field) == (4, "id") and "rows 2 and 4" in str(err)
    err = _predictions_error(b'{"a": null}')
    assert (err.row, err.field) == (1, "answer")


def test_write_predictions_refuses_duplicates_before_writing() -> None:
    fh = io.StringIO()
    with pytest.raises(DataFormatError):
        write_predictions_csv([("a", "x"), ("a", "y")], fh)
    assert fh.getvalue() == ""


def _predictions_error(data: bytes) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        read_predictions(data)
    return info.value
