"""bench/train_backends.py on the CPU (--dry-run: the tiny model): a variant that fails or hangs is recorded
and the others are still measured and reported; the loop and the SFTTrainer train on the same examples."""

import json
from pathlib import Path

import pytest

from bench import train_backends


def _report(out: Path) -> dict:
    (folder,) = out.glob("train_backends-*")
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def test_a_failing_variant_is_recorded_and_the_next_ones_still_measured(tmp_path: Path, capsys):
    variants = "unsloth:loop,peft:loop,peft:sft:padding_free@batch_size=4;grad_accum=1"
    code = train_backends.main(["--dry-run", "--variants", variants, "--out", str(tmp_path)])
    assert code == 0  # two variants were measured
    report = _report(tmp_path)
    failed, loop, sft = report["results"]
    assert failed["variant"] == "unsloth:loop" and "unsloth needs CUDA" in failed["error"]
    assert loop["trainer"] == "loop" and loop["batching"] == "padded" and loop["batch_size"] == 2
    assert sft["trainer"] == "sft" and sft["batching"] == "padding_free" and sft["batch_size"] == 4
    for measured in (loop, sft):
        assert measured["backend"] == "peft" and measured["steps"] == 3 and measured["tokens_per_second"] > 0
        assert measured["skipped_steps"] == [] and measured["attention"]["implementation"] == "sdpa"
        assert measured["parameters"] > 0 and measured["flop_share"] is None  # no FLOP share off CUDA
    assert report["data"]["examples"] == 4  # tokenized once, for every variant (the fixture's 4 questions)
    (folder,) = tmp_path.glob("train_backends-*")
    assert {p.name for p in folder.iterdir()} == {
        "report.json",
        "report.md",
        "unsloth-loop.log",
        "peft-loop.log",
        "peft-loop.train_log.jsonl",
        "peft-sft-padding_free-batch_size-4-grad_accum-1.log",
        "peft-sft-padding_free-batch_size-4-grad_accum-1.train_log.jsonl",
    }
    printed = capsys.readouterr().out
    assert "| peft:loop | cpu | 3 |" in printed and "| unsloth:loop | - |" in printed


def test_a_bad_variant_fails_before_any_run(tmp_path: Path):
    with pytest.raises(ValueError, match="trainer must be one of loop, sft"):
        train_backends.main(["--dry-run", "--variants", "peft:fast", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_a_variant_past_its_time_limit_is_stopped(tmp_path: Path):
    code = train_backends.main(
        ["--dry-run", "--variants", "peft:loop", "--timeout", "1", "--out", str(tmp_path)]
    )
    assert code == 1  # nothing was measured
    (result,) = _report(tmp_path)["results"]
    assert result == {**result, "variant": "peft:loop", "error": "timed out after 1 s"}
    assert result["wall_seconds"] < 30
