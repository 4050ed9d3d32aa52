"""report.json and report.md from a made-up batch result: order, pass attribution, the KorQuAD credit line."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ensemble.batch import BatchResult, RowResult
from ensemble.metric import Scores
from ensemble.plan import Decoding
from evaluation.report import KORQUAD_ATTRIBUTION, RunFacts, build_report, render_markdown


def facts(path: str = "/data/korquad/KorQuAD_v1.0_dev.json", **changes: Any) -> RunFacts:
    fields: dict[str, Any] = {
        "command": "qa-eval run --data x",
        "started": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "data_path": Path(path),
        "data_sha256": "0" * 64,
        "split": "eval",
        "n_in_split": 1510,
        "sample_seed": 0,
        "model_spec": "qwen2.5-coder-0.5b",
        "model_key": "qwen2.5-coder-0.5b",
        "model_fingerprint": "f" * 64,
        "device": "cuda:0",
        "dtype": "bfloat16",
        "quantization": "4bit",
        "decoder": "loop",
        "max_input_tokens": 4096,
        "members": [("base", 1.0)],
        "prompts": ["zero-shot", "principled"],
        "decoding": Decoding(),
        "strategies": True,
        "chunk_size": 16,
        "metric": "korquad",
        "load_seconds": 12.5,
    }
    return RunFacts(**{**fields, **changes})


def result(scores: dict[str, Scores] | None) -> BatchResult:
    rows = [RowResult("a", "서울", 0.9, 3), RowResult("b", "", 0.0, 0, error="PromptTooLongError: too long")]
    return BatchResult(rows=rows, scores=scores, seconds={"main": 40.0, "greedy": 10.0, "total": 50.0})


SCORES = {
    "top-beam:base:zero-shot": Scores(50.0, 60.0, 2, 1),
    "greedy:base:zero-shot": Scores(50.0, 70.0, 2, 1),
    "ensemble": Scores(50.0, 55.0, 2, 1),
    "member:base": Scores(0.0, 60.0, 2, 1),
}


def test_strategies_ensemble_first_then_by_f1() -> None:
    report = build_report(facts(), result(SCORES), [100, 5000, 300])
    assert list(report["strategies"]) == [
        "ensemble", "greedy:base:zero-shot", "top-beam:base:zero-shot", "member:base",
    ]  # fmt: skip
    assert report["strategies"]["greedy:base:zero-shot"]["pass"] == "greedy"
    assert report["strategies"]["member:base"] == {
        "exact_match": 0.0, "f1": 60.0, "count": 2, "missing": 1, "pass": "main",
    }  # fmt: skip
    assert report["timing"]["passes"] == {
        "main": {"decoding": "beam", "seconds": 40.0, "questions_per_second": 0.05},
        "greedy": {"decoding": "greedy", "seconds": 10.0, "questions_per_second": 0.2},
    }
    assert report["tokens"] | {"measure": None} == {
        "measure": None, "limit": 4096, "over_limit": 1, "median": 300, "p95": 5000, "max": 5000,
    }  # fmt: skip
    assert report["failed"] == [{"id": "b", "error": "PromptTooLongError: too long"}]


def test_markdown_table_and_credit_line() -> None:
    text = render_markdown(build_report(facts(), result(SCORES), [100, 5000, 300]))
    lines = text.splitlines()
    assert (
        lines[0]
        == "## qwen2.5-coder-0.5b on KorQuAD_v1.0_dev.json (eval split, 2 of 1,510 questions, sample seed 0)"
    )
    table = lines[lines.index("| strategy | EM | F1 | pass | pass seconds |") :]
    assert table[2] == "| ensemble | 50.00 | 55.00 | beam | 40.0 |"
    assert table[3] == "| greedy:base:zero-shot | 50.00 | 70.00 | greedy | 10.0 |"
    assert "prompts over the 4,096-token input limit: 1 of 2" in text
    assert "- failed `b`: PromptTooLongError: too long" in text
    assert f"Data: {KORQUAD_ATTRIBUTION}." in text


def test_without_gold_nothing_is_scored_and_other_data_gets_no_credit_line() -> None:
    report = build_report(facts("/data/news.csv", strategies=False), result(None), [10, 20])
    assert report["strategies"] == {} and report["metric"] is None
    assert report["data"]["attribution"] is None and set(report["timing"]["passes"]) == {"main"}
    text = render_markdown(report)
    assert "Not scored" in text and "KorQuAD" not in text and "| strategy |" not in text
