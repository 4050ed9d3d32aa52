"""Fitting the vote on saved candidates and re-voting them: `fit_vote`, `revote`, `qa-eval fit-vote / revote`,
on small synthetic candidates files made here (tests/evaluation/synthetic.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from ensemble.metric import f1_korquad
from ensemble.strategies import ENSEMBLE, ENSEMBLE_COUNT, ENSEMBLE_LIKELIHOOD
from ensemble.vote import VoteConfig, vote
from ensemble.vote_file import read_vote_file
from evaluation.candidates import QuestionCandidates, read_candidates
from evaluation.cli import main
from evaluation.selection import sha256_of
from evaluation.vote_fit import FitGrid, fit_vote, revote, source_facts
from tests.evaluation.synthetic import write_synthetic

SMALL = FitGrid(
    rank_discount=(1.0, 3.0),
    ungrounded_weight=(0.3,),
    length_power=(0.0, 1.0),
    temperature=(1.0, 4.0),
    count_mix=(0.0, 0.5),
)


@pytest.fixture(scope="module")
def questions(tmp_path_factory: pytest.TempPathFactory) -> list[QuestionCandidates]:
    return read_candidates(write_synthetic(tmp_path_factory.mktemp("c") / "candidates.jsonl", 120))


def mean_f1(questions: list[QuestionCandidates], config: VoteConfig) -> float:
    return 100 * float(
        np.mean([f1_korquad(vote(q.candidates, config).answer, q.answers[0]) for q in questions])
    )


def test_the_fit_prefers_the_evidence_and_records_its_provenance(questions: list[QuestionCandidates]) -> None:
    fitted = fit_vote(questions, SMALL, source={"file": "candidates.jsonl", "sha256": "ab12"})
    config, provenance = fitted.vote, fitted.provenance
    assert config.rule == "likelihood" and config.calibration is not None
    assert config.calibration.a > 0  # a higher raw score means more often right
    f1 = provenance["f1"]
    assert f1["chosen"] == f1["likelihood"] > f1["count"] and f1["oracle"] >= f1["chosen"]
    assert f1["chosen"] == pytest.approx(mean_f1(questions, config), abs=0.01)
    assert provenance["candidates"] == {"file": "candidates.jsonl", "sha256": "ab12", "questions": 120,
                                        "with_likelihoods": 120}  # fmt: skip
    strategies = provenance["strategies"]
    assert list(strategies)[0] == ENSEMBLE and strategies[ENSEMBLE]["f1"] == f1["chosen"]
    assert {"member:a", "member:b", "top-beam:c:principled", "prompt:zero-shot", ENSEMBLE_COUNT} <= set(
        strategies
    )
    assert strategies[ENSEMBLE_LIKELIHOOD] == strategies[ENSEMBLE]
    # Member a's boundary errors: the likelihood vote beats its count vote and every single member.
    best_member = max(v["f1"] for s, v in strategies.items() if s.startswith("member:"))
    assert f1["chosen"] > best_member
    calibration = provenance["calibration"]
    assert calibration["ece_calibrated"] < calibration["ece_raw"]
    assert provenance["rule"] == "likelihood" and provenance["date"]
    assert provenance["best_count_rule"]["rank_discount"] in SMALL.rank_discount
    assert list(provenance["grid"]["temperature"]) == [1.0, 4.0]


@pytest.mark.parametrize(
    ("combine", "mbr", "count_mix", "length_power", "temperature"),
    [
        ("mixture", True, 0.0, 0.0, 1.0),
        ("product", True, 0.5, 1.0, 4.0),
        ("mixture", False, 0.25, 0.5, 0.5),
        ("product", False, 0.0, 0.0, 8.0),
    ],
)
def test_the_batched_grid_scores_exactly_what_vote_answers(
    questions: list[QuestionCandidates],
    combine: str,
    mbr: bool,
    count_mix: float,
    length_power: float,
    temperature: float,
) -> None:
    one = FitGrid(
        rank_discount=(2.0,),
        ungrounded_weight=(0.5,),
        length_power=(length_power,),
        temperature=(temperature,),
        combine=(combine,),  # type: ignore[arg-type]
        count_mix=(count_mix,),
        mbr=(mbr,),
    )
    expected = VoteConfig(
        rule="likelihood", rank_discount=2.0, ungrounded_weight=0.5, length_power=length_power,
        temperature=temperature, combine=combine, count_mix=count_mix, mbr=mbr,  # type: ignore[arg-type]
    )  # fmt: skip
    fitted = fit_vote(questions, one)
    assert fitted.provenance["f1"]["likelihood"] == pytest.approx(mean_f1(questions, expected), abs=0.006)


def test_without_likelihoods_the_count_rule_is_fitted(tmp_path: Path) -> None:
    bare = read_candidates(write_synthetic(tmp_path / "c.jsonl", 40, likelihoods=False))
    fitted = fit_vote(bare, SMALL)
    assert fitted.vote.rule == "count" and fitted.provenance["f1"]["likelihood"] is None
    assert fitted.vote.rank_discount in (1.0, 3.0)
    assert ENSEMBLE_LIKELIHOOD not in fitted.provenance["strategies"]
    with pytest.raises(ValueError, match="no question"):
        fit_vote([QuestionCandidates("q", (), (), "", 0.0)])


def test_revote_scores_every_strategy_and_the_calibration(questions: list[QuestionCandidates]) -> None:
    count = revote(questions, VoteConfig())
    likelihood = revote(questions, VoteConfig(rule="likelihood"))
    assert list(count.scores)[0] == ENSEMBLE and count.questions == 120 and count.with_likelihoods == 120
    assert (
        count.scores[ENSEMBLE].f1 == count.scores[ENSEMBLE_COUNT].f1
    )  # the file has likelihoods: both shown
    assert likelihood.scores[ENSEMBLE].f1 == likelihood.scores[ENSEMBLE_LIKELIHOOD].f1
    assert likelihood.scores[ENSEMBLE_COUNT].f1 == count.scores[ENSEMBLE].f1
    assert 0.0 <= count.ece <= 1.0 and sum(b["count"] for b in count.reliability) == 120


def test_a_file_of_the_eval_split_is_never_fitted(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "candidates.jsonl", 3)
    facts = source_facts(path)
    assert facts == {"file": "candidates.jsonl", "sha256": sha256_of(path)}
    (tmp_path / "report.json").write_text(
        json.dumps({"data": {"path": "dev.json", "split": "train"}}), "utf-8"
    )
    assert source_facts(path)["split"] == "train" and source_facts(path)["data"] == "dev.json"
    (tmp_path / "report.json").write_text(json.dumps({"data": {"split": "eval"}}), "utf-8")
    with pytest.raises(ValueError, match="eval split"):
        source_facts(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit-vote", "--candidates", str(path), "--out", str(tmp_path / "vote.json")])
    assert exit_info.value.code == 1
    assert not (tmp_path / "vote.json").exists()


def test_fit_vote_and_revote_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "held-out").mkdir()
    held_out = write_synthetic(tmp_path / "held-out" / "candidates.jsonl", 60, seed=1)
    vote_path = tmp_path / "vote.json"
    assert main(["fit-vote", "--candidates", str(held_out), "--out", str(vote_path)]) == 0
    out = capsys.readouterr().out
    assert "rule likelihood on 60 questions (60 with likelihoods)" in out and "ECE raw" in out
    fitted = read_vote_file(vote_path)
    assert fitted.provenance["candidates"]["sha256"] == sha256_of(held_out)
    assert fitted.provenance["fitted_by"].startswith("qa-eval fit-vote --candidates ")

    (tmp_path / "eval").mkdir()
    evaluated = write_synthetic(tmp_path / "eval" / "candidates.jsonl", 30, seed=2)
    assert main(["revote", "--candidates", str(evaluated), "--vote", str(vote_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["strategy", "EM", "F1"] and table[1].startswith("ensemble ")
    assert table[-1].startswith("ECE of the ensemble's confidence: ")
    written = json.loads((tmp_path / "eval" / "revote.json").read_text("utf-8"))
    assert written["vote"]["rule"] == "likelihood" and written["candidates"]["questions"] == 30
    assert set(written["strategies"]) >= {ENSEMBLE, ENSEMBLE_COUNT, ENSEMBLE_LIKELIHOOD, "member:a"}
    assert 0.0 <= written["calibration"]["ece"] <= 1.0
    assert main(["revote", "--candidates", str(evaluated), "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text("utf-8"))["vote"]["rule"] == "count"
