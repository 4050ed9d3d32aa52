"""Per-strategy answers re-voted from one pass's candidates: ids, order and answers for a scripted set."""

from ensemble.plan import BASE_MEMBER_NAME
from ensemble.strategies import ENSEMBLE, strategy_answers
from ensemble.vote import Candidate

# Member "a" votes with weight 1, "b" with weight 2; beam rank r weighs 1 / (1 + r). The texts share no
# characters, so every one is its own cluster and the weights below decide each vote.
BEAMS = {
    ("a", "zero-shot"): ("서울", "부산", "대전"),
    ("a", "principled"): ("부산", "대전", "서울"),
    ("b", "zero-shot"): ("대전", "부산", "서울"),
    ("b", "principled"): ("서울", "대전", "부산"),
}
GREEDY = {
    ("a", "zero-shot"): "광주",
    ("a", "principled"): "부산",
    ("b", "zero-shot"): "대전",
    ("b", "principled"): "인천",
}
WEIGHTS = {"a": 1.0, "b": 2.0}


def candidate(text: str, adapter: str | None, prompt: str, rank: int, weight: float = 1.0) -> Candidate:
    return Candidate(text, text, adapter, prompt, rank, -0.1 * rank, weight, grounded=True)


def beam_candidates() -> list[Candidate]:
    return [
        candidate(text, adapter, prompt, rank, WEIGHTS[adapter])
        for (adapter, prompt), texts in BEAMS.items()
        for rank, text in enumerate(texts)
    ]


def greedy_candidates() -> list[Candidate]:
    return [candidate(text, a, p, 0, WEIGHTS[a]) for (a, p), text in GREEDY.items()]


def test_ids_in_stable_order_and_answers() -> None:
    answers = strategy_answers(beam_candidates(), greedy_candidates())
    assert list(answers) == [
        "greedy:a:zero-shot", "top-beam:a:zero-shot", "greedy:a:principled", "top-beam:a:principled",
        "member:a",
        "greedy:b:zero-shot", "top-beam:b:zero-shot", "greedy:b:principled", "top-beam:b:principled",
        "member:b",
        "prompt:zero-shot", "prompt:principled", ENSEMBLE,
    ]  # fmt: skip
    assert answers == {
        "greedy:a:zero-shot": "광주",
        "top-beam:a:zero-shot": "서울",
        "greedy:a:principled": "부산",
        "top-beam:a:principled": "부산",
        # a: 서울 1 + 1/3, 부산 1/2 + 1, 대전 1/3 + 1/2
        "member:a": "부산",
        "greedy:b:zero-shot": "대전",
        "top-beam:b:zero-shot": "대전",
        "greedy:b:principled": "인천",
        "top-beam:b:principled": "서울",
        # b (x2): 대전 2 + 1, 서울 2/3 + 2, 부산 1 + 2/3
        "member:b": "대전",
        # zero-shot: 서울 1 + 2/3, 부산 1/2 + 1, 대전 1/3 + 2
        "prompt:zero-shot": "대전",
        # principled: 부산 1 + 2/3, 대전 1/2 + 1, 서울 1/3 + 2
        "prompt:principled": "서울",
        # all: 서울 4, 대전 3 5/6, 부산 3 1/6
        ENSEMBLE: "서울",
    }


def test_without_a_greedy_pass_there_are_no_greedy_ids() -> None:
    answers = strategy_answers(beam_candidates())
    assert not [s for s in answers if s.startswith("greedy:")]
    assert answers[ENSEMBLE] == "서울"
    assert answers["top-beam:b:principled"] == "서울"


def test_the_base_model_is_named_base() -> None:
    beam = [candidate("서울", None, "zero-shot", 0), candidate("부산", None, "zero-shot", 1)]
    greedy = [candidate("부산", None, "zero-shot", 0)]
    assert beam[0].member == BASE_MEMBER_NAME
    assert strategy_answers(beam, greedy) == {
        "greedy:base:zero-shot": "부산",
        "top-beam:base:zero-shot": "서울",
        "member:base": "서울",
        "prompt:zero-shot": "서울",
        ENSEMBLE: "서울",
    }


def test_greedy_pass_only_uses_its_first_output() -> None:
    greedy = [candidate("부산", "a", "zero-shot", 1), candidate("대전", "a", "zero-shot", 0)]
    assert strategy_answers([], greedy) == {"greedy:a:zero-shot": "대전"}


def test_no_candidates_no_strategies() -> None:
    assert strategy_answers([]) == {}
