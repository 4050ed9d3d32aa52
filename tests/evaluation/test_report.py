"""report.json and report.md from a made-up batch result: order, pass attribution, the KorQuAD credit line."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ensemble.batch import BatchResult, RowResult
from ensemble.metric import Scores
from ensemble.plan import Decoding
from evaluation.plots import RELIABILITY_PLOT, plot_reliability
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


def graded_result() -> BatchResult:
    """Ten answered gold rows (confidence, right?) and one failed row."""
    graded = [(0.95, True), (0.92, True), (0.9, False), (0.75, True), (0.7, False),
              (0.55, True), (0.5, False), (0.35, False), (0.3, False), (0.1, False)]  # fmt: skip
    rows = [
        RowResult(f"q{i}", "답", conf, 2, correct=right) for i, (conf, right) in enumerate(graded)
    ] + [RowResult("bad", "", 0.0, 0, error="PromptTooLongError: too long")]
    return BatchResult(rows=rows, scores=SCORES, seconds={"main": 40.0, "greedy": 10.0, "total": 50.0})


def test_calibration_section_bins_the_confidence_against_exact_match() -> None:
    calibration = build_report(facts(), graded_result(), [100])["calibration"]
    assert (calibration["questions"], calibration["failed_rows"], calibration["bins"]) == (10, 1, 10)
    assert calibration["accuracy"] == 0.4 and calibration["mean_confidence"] == 0.602
    table = calibration["reliability"]
    assert len(table) == 10 and table[-1]["upper"] == 1.0
    assert table[9] == {"lower": 0.9, "upper": 1.0, "count": 3, "mean_confidence": 0.9233, "accuracy": 0.6667}
    assert [b["count"] for b in table] == [0, 1, 0, 2, 0, 2, 0, 2, 0, 3]
    expected_ece = (1 * 0.1 + 2 * 0.325 + 2 * 0.025 + 2 * 0.225 + 3 * abs(2 / 3 - 0.9233333)) / 10
    assert abs(calibration["ece"] - expected_ece) < 1e-4


def test_abstention_table_prices_min_confidence_thresholds() -> None:
    abstention = build_report(facts(), graded_result(), [100])["calibration"]["abstention"]
    assert [a["min_confidence"] for a in abstention] == [0.0, 0.3, 0.5, 0.7, 0.8, 0.9]
    assert abstention[0] == {"min_confidence": 0.0, "answered": 10, "coverage": 1.0, "accuracy": 0.4}
    assert abstention[2] == {"min_confidence": 0.5, "answered": 7, "coverage": 0.7, "accuracy": 0.5714}
    assert abstention[5] == {"min_confidence": 0.9, "answered": 3, "coverage": 0.3, "accuracy": 0.6667}


def test_calibration_in_markdown_and_absent_without_gold() -> None:
    text = render_markdown(build_report(facts(), graded_result(), [100]))
    assert "Calibration over 10 answered questions: ECE" in text
    assert "| 0.9-1.0 | 3 | 0.923 | 0.667 |" in text
    assert "| 0.5 | 7 | 0.700 | 0.571 |" in text
    report = build_report(facts(), result(SCORES), [100])  # rows that carry no correctness
    assert report["calibration"] is None
    assert "Calibration" not in render_markdown(report)


def test_reliability_plot_is_a_png_and_is_skipped_without_calibration(tmp_path: Path) -> None:
    calibration = build_report(facts(), graded_result(), [100])["calibration"]
    path = plot_reliability(calibration, tmp_path / RELIABILITY_PLOT, title="Reliability: test")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_reliability(None, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
