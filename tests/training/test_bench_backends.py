"""bench/train_backends.py on the CPU (--dry-run: the tiny model): a backend that fails or hangs is recorded
and the others are still measured and reported."""

import json
from pathlib import Path

from bench import train_backends


def _report(out: Path) -> dict:
    (folder,) = out.glob("train_backends-*")
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def test_a_failing_backend_is_recorded_and_the_next_one_still_measured(tmp_path: Path, capsys):
    code = train_backends.main(["--dry-run", "--backends", "unsloth,peft", "--out", str(tmp_path)])
    assert code == 0  # one backend was measured
    report = _report(tmp_path)
    failed, measured = report["results"]
    assert failed["backend"] == "unsloth" and "unsloth needs CUDA" in failed["error"]
    assert measured["backend"] == "peft" and measured["steps"] == 3 and measured["tokens_per_second"] > 0
    assert measured["skipped_steps"] == [] and measured["attention"]["implementation"] == "sdpa"
    assert report["data"]["examples"] == 4  # tokenized once, for both
    (folder,) = tmp_path.glob("train_backends-*")
    assert {p.name for p in folder.iterdir()} == {
        "report.json",
        "report.md",
        "unsloth.log",
        "peft.log",
        "peft.train_log.jsonl",
    }
    printed = capsys.readouterr().out
    assert "| peft | cpu | 3 |" in printed and "| unsloth | - |" in printed


def test_a_backend_past_its_time_limit_is_stopped(tmp_path: Path):
    code = train_backends.main(["--dry-run", "--timeout", "1", "--out", str(tmp_path)])
    assert code == 1  # nothing was measured
    (result,) = _report(tmp_path)["results"]
    assert result == {**result, "backend": "peft", "error": "timed out after 1 s"}
    assert result["wall_seconds"] < 30
