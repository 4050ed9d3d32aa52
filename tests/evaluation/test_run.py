"""`qa-eval run` end to end on the tiny random model with three random adapters (answers are noise; the
files, their shape and the bookkeeping are what is checked)."""

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from evaluation.cli import DEFAULT_MODEL, main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "news_qa.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IDS = ["news-001", "news-002", "news-003", "news-004"]


def run_cli(out: Path, model: Path, adapters: Path, cache: Path, *extra: str) -> Path:
    argv = ["run", "--data", str(FIXTURE), "--model", str(model), "--adapters-dir", str(adapters)]
    argv += ["--cache-dir", str(cache), "--device", "cpu", "--max-new-tokens", "3", "--out", str(out)]
    # The GPU's default plan on the 3 adapters (the CPU's is one member, greedy, one prompt).
    argv += ["--prompts", "zero-shot,principled", "--num-beams", "3", "--members", "3"]
    assert main([*argv, "--no-progress", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def report_dir(
    tiny_model_dir: Path, tiny_adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("qa-eval-run")
    return run_cli(root / "report", tiny_model_dir, tiny_adapters_dir, root / "cache")


@pytest.fixture(scope="module")
def report(report_dir: Path) -> dict[str, Any]:
    return json.loads((report_dir / "report.json").read_text("utf-8"))


def test_the_report_folder_has_every_file(report_dir: Path) -> None:
    names = {"report.md", "report.json", "predictions.csv", "predictions.json"}
    names |= {"f1_by_strategy.png", "context_tokens.png", "reliability.png"}
    assert names <= {p.name for p in report_dir.iterdir()}
    for png in ("f1_by_strategy.png", "context_tokens.png", "reliability.png"):
        data = (report_dir / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_report_json_has_every_strategy_scored(report: dict[str, Any]) -> None:
    strategies = report["strategies"]
    assert list(strategies)[0] == "ensemble"
    assert {"ensemble", "greedy:alpha:zero-shot", "top-beam:gamma:principled", "member:beta"} <= set(
        strategies
    )
    rest = list(strategies.values())[1:]
    assert [s["f1"] for s in rest] == sorted((s["f1"] for s in rest), reverse=True)
    for s in strategies.values():
        assert s["count"] == 4 and 0 <= s["exact_match"] <= 100 and 0 <= s["f1"] <= 100
    assert strategies["greedy:alpha:zero-shot"]["pass"] == "greedy"
    assert strategies["ensemble"]["pass"] == "main"


def test_report_json_records_the_run(report: dict[str, Any], tiny_model_dir: Path) -> None:
    assert report["schema"] == "qa-eval.report/1"
    assert report["data"] | {"path": None, "sha256": None} == {
        "path": None, "sha256": None, "attribution": None, "split": "all", "questions_in_split": 4,
        "questions": 4, "sample_seed": None,
    }  # fmt: skip
    assert report["model"]["spec"] == str(tiny_model_dir) and report["model"]["device"] == "cpu"
    assert report["model"]["decoder"] == "loop"  # the service's default (auto, stacked LoRA)
    assert report["model"]["fingerprint"]
    assert [m["name"] for m in report["members"]] == ["alpha", "beta", "gamma"]
    assert report["prompts"] == ["zero-shot", "principled"]
    assert report["decoding"] == {
        "strategy": "beam",
        "num_beams": 3,
        "outputs_per_prompt": 3,
        "max_new_tokens": 3,
    }
    assert set(report["software"]) == {
        "python",
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "qa-ensemble",
    }
    assert set(report["timing"]["passes"]) == {"main", "greedy"}
    assert report["timing"]["passes"]["main"]["seconds"] > 0
    assert report["tokens"]["limit"] == 4096 and report["tokens"]["over_limit"] == 0
    assert report["failed"] == []
    assert report["command"].startswith("qa-eval run --data ")


def test_predictions_files_hold_every_id(report_dir: Path, report: dict[str, Any]) -> None:
    with (report_dir / "predictions.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "answer"] and [r[0] for r in rows[1:]] == IDS
    answers = json.loads((report_dir / "predictions.json").read_text("utf-8"))
    assert list(answers) == IDS and answers == dict(rows[1:])


def test_report_md_is_a_small_table(report_dir: Path) -> None:
    text = (report_dir / "report.md").read_text("utf-8")
    assert "| strategy | EM | F1 | pass | pass seconds |" in text
    lines = text.splitlines()
    start = lines.index("| strategy | EM | F1 | pass | pass seconds |")
    block = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    table = [line for line in block if line.startswith("| ")]  # the header and the rows, not the rule
    assert table[1].startswith("| ensemble |") and len(table) == 1 + 3 * (2 * 2 + 1) + 2 + 1
    assert "share that pass's generation time" in text and "KorQuAD" not in text
    assert "Calibration over 4 answered questions" in text  # the fixture has gold answers
    assert len(lines) < 80


def test_report_json_has_the_calibration_of_the_ensembles_confidence(report: dict[str, Any]) -> None:
    calibration = report["calibration"]
    assert calibration["questions"] == 4 and calibration["failed_rows"] == 0
    assert sum(b["count"] for b in calibration["reliability"]) == 4 and len(calibration["reliability"]) == 10
    assert 0.0 <= calibration["ece"] <= 1.0
    # The ensemble's EM in the report, as a share, is the calibration's accuracy (no row failed).
    assert calibration["accuracy"] * 100 == report["strategies"]["ensemble"]["exact_match"]
    assert calibration["abstention"][0] == {
        "min_confidence": 0.0, "answered": 4, "coverage": 1.0, "accuracy": calibration["accuracy"],
    }  # fmt: skip


def test_prompts_over_the_input_limit_fail_their_rows_and_are_reported(
    tiny_model_dir: Path, tiny_adapters_dir: Path, tmp_path: Path
) -> None:
    out = run_cli(
        tmp_path / "r", tiny_model_dir, tiny_adapters_dir, tmp_path / "cache",
        "--max-input-tokens", "50", "--limit", "2", "--sample-seed", "1", "--no-strategies",
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text("utf-8"))
    assert report["data"]["questions"] == 2 and report["data"]["sample_seed"] == 1
    assert report["tokens"]["over_limit"] == 2
    assert len(report["failed"]) == 2 and "PromptTooLongError" in report["failed"][0]["error"]
    assert list(report["strategies"]) == ["ensemble"]
    assert report["strategies"]["ensemble"] | {"pass": None} == {
        "exact_match": 0.0, "f1": 0.0, "count": 2, "missing": 2, "pass": None,
    }  # fmt: skip
    assert set(report["timing"]["passes"]) == {"main"}
    assert "failed `news-" in (out / "report.md").read_text("utf-8")


def test_the_default_model_is_the_engine_default() -> None:
    from engine import EngineConfig

    assert DEFAULT_MODEL == EngineConfig().model


def test_candidates_jsonl_holds_every_candidate_with_its_provenance(
    report_dir: Path, report: dict[str, Any]
) -> None:
    lines = [json.loads(x) for x in (report_dir / "candidates.jsonl").read_text("utf-8").splitlines()]
    assert [line["id"] for line in lines] == IDS
    answers = json.loads((report_dir / "predictions.json").read_text("utf-8"))
    gold = json.loads(FIXTURE.read_text("utf-8"))
    first = gold["data"][0]["paragraphs"][0]["qas"][0]
    assert lines[0]["answers"] == [a["text"] for a in first["answers"]]
    for line in lines:
        assert line["answer"] == answers[line["id"]] and line["error"] is None
        # 3 adapters x 2 prompts x 3 beams (the defaults), each with where it came from
        assert len(line["candidates"]) == 18
        assert {c["adapter"] for c in line["candidates"]} == {"alpha", "beta", "gamma"}
        assert {c["beam_rank"] for c in line["candidates"]} == {0, 1, 2}
        for c in line["candidates"]:
            assert isinstance(c["score"], float) and isinstance(c["grounded"], bool)


def test_ids_keep_only_the_questions_named(
    tmp_path: Path, tiny_model_dir: Path, tiny_adapters_dir: Path
) -> None:
    ids = tmp_path / "holdout_ids.json"
    ids.write_text(json.dumps({"held_out_ids": ["news-003", "news-001", "not-in-the-file"]}), "utf-8")
    extra = ("--ids", str(ids), "--num-beams", "1")
    out = run_cli(tmp_path / "r", tiny_model_dir, tiny_adapters_dir, tmp_path / "c", *extra)
    assert list(json.loads((out / "predictions.json").read_text("utf-8"))) == ["news-001", "news-003"]
