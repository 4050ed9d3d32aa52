"""`qa-eval`: score predictions, run the pipeline offline into a report, fit or re-vote saved candidates.

    qa-eval score --data FILE --predictions FILE [--metric korquad|squad] [--split train|eval|all]
    qa-eval run --data FILE [--split train|eval|all] [--ids FILE] [--limit N] [--sample-seed S] [--out DIR]
                [--model SPEC] [--adapters-dir DIR] [--cache-dir DIR] [--device D] [--quantization Q]
                [--dtype T] [--max-input-tokens N] [--prompts a,b,c] [--num-beams N] [--members N]
                [--max-new-tokens N] [--chunk-size N] [--metric korquad|squad] [--no-strategies]
                [--no-progress]
    qa-eval fit-vote --candidates FILE --out FILE
    qa-eval revote --candidates FILE [--vote FILE] [--out FILE]
    qa-eval headroom --candidates FILE [--vote FILE] [--data FILE] [--rerank-folds K] [--out FILE]

`fit-vote` fits the vote (rule, weights, calibration) on the candidates.jsonl of a run over HELD-OUT TRAIN
questions and writes a vote.json to ship beside the adapters (`adapters/<model key>/vote.json`); `revote`
re-votes a candidates.jsonl (the eval split's, to check a fitted vote offline; never fit on it) and prints
F1/EM of every strategy and the calibration error of the ensemble's confidence (its reliability plot beside
the JSON). `headroom` says what choosing could still buy from those members (`evaluation.headroom`: oracles
over the members' top answers, rows and candidates, how often the members agree) and, with
`--rerank-folds K`, the k-fold F1 of a learned reranker against the vote (on held-out train candidates).

`--split` keeps only the questions whose article falls in the project's fixed md5-by-title split
(KorQuAD/SQuAD JSON only); `all` (the default) keeps every question of any supported file. `--limit N` then
draws a fixed random sample of N questions with `random.Random(--sample-seed)` (default seed 0) and puts it
back into file order, so the same file, split, limit and seed always select the same questions. `--ids FILE`
first keeps only the questions it names (e.g. `qa-train`'s held-out ids, to measure on data no member saw).
This module only parses arguments and prints; the work is in `evaluation.run`, `evaluation.vote_fit` and
`ensemble`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from ensemble.datasets import DataFormatError, read_predictions
from ensemble.metric import ScoringError, score_predictions
from ensemble.plan import DEVICE_DEFAULTS, Decoding, PlanDefaults, plan_defaults
from ensemble.prompts import PROMPT_STYLES
from evaluation.selection import load_split, read_ids, select
from models.base.sources import DEFAULT_MODEL, default_cache_dir

SELECTION_HELP = __doc__[__doc__.index("`--split`") : __doc__.index("This module")]
# The service's default budget (app/settings.py); prompts and beams default by device as the service's do
# (ensemble.plan.DEVICE_DEFAULTS), so a report describes what users get unless flags say otherwise.
DEFAULT_MAX_NEW_TOKENS = 24


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def _prompts(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in PROMPT_STYLES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown prompt style(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(PROMPT_STYLES)}"
        )
    return names


def _by_device(value: Callable[[PlanDefaults], str]) -> str:
    """A flag's help tail naming the service's default on each device (ensemble.plan.DEVICE_DEFAULTS)."""
    return (
        "(default: the service's for the device: "
        + "; ".join(f"{device}: {value(plan)}" for device, plan in DEVICE_DEFAULTS.items())
        + ")"
    )


def _score(args: argparse.Namespace) -> int:
    examples = load_split(args.data, args.split)
    gold = {ex.id: list(ex.answers) for ex in examples}
    predictions = read_predictions(args.predictions)
    scores = score_predictions(gold, predictions, metric=args.metric)
    extra = sum(1 for qid in predictions if qid not in gold)
    sys.stdout.write(
        f"EM {scores.exact_match:.2f}\nF1 {scores.f1:.2f}\n"
        f"count {scores.count}\nmissing {scores.missing}\nextra {extra}\n"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    # Imported here so `score` starts fast: these load torch (through engine), matplotlib and tqdm.
    from engine import EngineConfig
    from evaluation.run import RunConfig, execute

    ids = read_ids(args.ids) if args.ids else None
    selection = select(args.data, args.split, args.limit, args.sample_seed, ids)
    if not selection.examples:
        raise DataFormatError(f"no questions in {args.data} (split {args.split})")
    from models.base.loading import LoadConfig

    strategy = None if args.num_beams is None else "beam" if args.num_beams > 1 else "greedy"
    plan = plan_defaults(LoadConfig(device=args.device).resolved_device()).overridden(
        prompts=args.prompts, strategy=strategy, num_beams=args.num_beams, members=args.members
    )
    decoding = Decoding(strategy=plan.strategy, num_beams=plan.num_beams, max_new_tokens=args.max_new_tokens)
    engine = EngineConfig(
        model=args.model,
        cache_dir=args.cache_dir,
        adapters_dir=args.adapters_dir,
        device=args.device,
        quantization=args.quantization,
        dtype=args.dtype,
        decoder=args.decoder,
        max_input_tokens=args.max_input_tokens,
        default_prompts=plan.prompts,
        default_members=plan.members,
        default_decoding=decoding,
    )
    out = args.out or Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")
    config = RunConfig(
        engine=engine,
        out_dir=out,
        data_path=args.data,
        command=args.command,
        chunk_size=args.chunk_size,
        chunk_tokens=args.chunk_tokens,
        strategies=args.strategies,
        metric=args.metric,
        progress=args.progress,
    )
    execute(config, selection)
    sys.stdout.write((out / "report.md").read_text("utf-8"))
    sys.stderr.write(f"report written to {out}\n")
    return 0


def _fit_vote(args: argparse.Namespace) -> int:
    from ensemble.vote_file import write_vote_file
    from evaluation.candidates import read_candidates
    from evaluation.vote_fit import fit_vote, source_facts

    source = source_facts(args.candidates)  # refuses a file of the eval split
    vote_file = fit_vote(read_candidates(args.candidates), source=source)
    vote_file.provenance["fitted_by"] = args.command
    write_vote_file(args.out, vote_file)
    provenance = vote_file.provenance
    f1 = provenance["f1"]
    sys.stdout.write(
        f"rule {provenance['rule']} on {provenance['candidates']['questions']} questions "
        f"({provenance['candidates']['with_likelihoods']} with likelihoods) in {provenance['seconds']}s\n"
        f"F1 chosen {f1['chosen']:.2f}  count {f1['count']:.2f}  likelihood "
        f"{'-' if f1['likelihood'] is None else format(f1['likelihood'], '.2f')}  oracle {f1['oracle']:.2f}\n"
        f"ECE raw {provenance['calibration']['ece_raw']:.4f}, calibrated "
        f"{provenance['calibration']['ece_calibrated']:.4f} (in-sample)\n"
    )
    sys.stderr.write(f"vote config written to {args.out}\n")
    return 0


def _revote(args: argparse.Namespace) -> int:
    import json

    from ensemble.vote import VoteConfig
    from ensemble.vote_file import read_vote_file
    from evaluation.candidates import read_candidates
    from evaluation.selection import sha256_of
    from evaluation.vote_fit import revote, revote_to_json

    config = read_vote_file(args.vote).vote if args.vote else VoteConfig()
    result = revote(read_candidates(args.candidates), config)
    source = {"file": args.candidates.name, "sha256": sha256_of(args.candidates)}
    out = args.out or args.candidates.with_name("revote.json")
    written = revote_to_json(result, config, source)
    out.write_text(json.dumps(written, ensure_ascii=False, indent=2) + "\n", "utf-8")
    from evaluation.plots import plot_reliability

    plot = out.with_suffix(".png")  # the reliability of the re-voted ensemble's confidence
    plot_reliability(written["calibration"], plot, title=f"Reliability: {args.candidates.name} re-voted")
    width = max(len(s) for s in result.scores)
    lines = [f"{'strategy':<{width}}      EM      F1"]
    lines += [f"{s:<{width}}  {v.exact_match:6.2f}  {v.f1:6.2f}" for s, v in result.scores.items()]
    lines.append(
        f"ECE of the ensemble's confidence: {result.ece:.4f} ({result.questions} questions, "
        f"{result.with_likelihoods} with likelihoods)"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stderr.write(f"re-vote written to {out} and {plot}\n")
    return 0


def _headroom(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from ensemble.datasets import load_examples
    from ensemble.vote import VoteConfig
    from ensemble.vote_file import read_vote_file
    from evaluation.candidates import read_candidates
    from evaluation.headroom import headroom, rerank_cv
    from evaluation.selection import sha256_of

    questions = read_candidates(args.candidates)
    config = read_vote_file(args.vote).vote if args.vote else VoteConfig(rule="likelihood")
    found = headroom(questions)
    lines = [f"{found.questions} questions, members {', '.join(found.members)}"]
    lines += [f"  top answer of {m}: F1 {v:.2f}" for m, v in found.member_top.items()]
    lines += [
        f"  oracle over the members' top answers: {found.oracle_members:.2f} "
        f"(+{found.oracle_members - found.member_top[found.best_member]:.2f} over {found.best_member})",
        f"  oracle over every row's top answer: {found.oracle_rows:.2f}; over every candidate: "
        f"{found.oracle_candidates:.2f}",
        f"  members agree on {found.agree:.1%}; the best member is beaten by another on "
        f"{found.best_wrong_other_right:.1%} and beats every other on {found.best_right_other_wrong:.1%}",
    ]
    written = {
        "candidates": {"file": args.candidates.name, "sha256": sha256_of(args.candidates)},
        "headroom": asdict(found),
    }
    if args.rerank_folds:
        texts = None
        if args.data:
            texts = {ex.id: (ex.context, ex.question) for ex in load_examples(args.data)}
        result = rerank_cv(questions, config, texts, folds=args.rerank_folds)
        lines.append(
            f"  reranker, {result.folds}-fold by article: F1 {result.reranker_f1:.2f} against the vote's "
            f"{result.vote_f1:.2f} on the same {result.questions} questions"
        )
        written["rerank"] = asdict(result)
        written["vote"] = str(args.vote) if args.vote else "VoteConfig(rule='likelihood')"
    if args.out:
        args.out.write_text(json.dumps(written, ensure_ascii=False, indent=2) + "\n", "utf-8")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qa-eval",
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command_name", required=True)

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data", type=Path, metavar="FILE", required=True, help="KorQuAD/SQuAD JSON, CSV or JSON Lines file"
    )
    data.add_argument(
        "--split",
        choices=("train", "eval", "all"),
        default="all",
        help="the fixed md5-by-title article split of a KorQuAD/SQuAD JSON file (default: all)",
    )
    data.add_argument("--metric", choices=("korquad", "squad"), default="korquad", help="default: korquad")

    score = commands.add_parser("score", parents=[data], help="print EM and F1 of a prediction file")
    score.add_argument(
        "--predictions", type=Path, metavar="FILE", required=True, help="{id: answer} JSON or id,answer CSV"
    )
    score.set_defaults(handler=_score)

    run = commands.add_parser(
        "run",
        parents=[data],
        help="answer the questions offline and write a report folder",
        description="Answer the questions offline and write a report folder.\n\n" + SELECTION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--limit", type=_positive, metavar="N", help="answer a fixed random sample of N questions"
    )
    run.add_argument(
        "--ids",
        type=Path,
        metavar="FILE",
        help="answer only these question ids (JSON list, qa-train's .training/holdout_ids.json, or lines)",
    )
    run.add_argument(
        "--sample-seed", type=int, metavar="S", default=0, help="seed of the --limit sample (default: 0)"
    )
    run.add_argument("--out", type=Path, metavar="DIR", help="report folder (default: reports/<timestamp>)")
    run.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"base model key, 'tiny-random', folder or hub id (default: {DEFAULT_MODEL})",
    )
    run.add_argument(
        "--adapters-dir", type=Path, metavar="DIR", help="folder of adapters (default: none, the base alone)"
    )
    run.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="default: $QA_CACHE_DIR or ~/.cache/qa-ensemble",
    )
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    run.add_argument(
        "--quantization",
        choices=("auto", "4bit", "none"),
        default="auto",
        help="auto: 4-bit NF4 on CUDA, none on the CPU",
    )
    run.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float16", "float32"),
        default="auto",
        help="auto: bfloat16 on CUDA, float32 on the CPU",
    )
    run.add_argument(
        "--decoder",
        choices=("auto", "hf", "loop"),
        default="auto",
        help="how greedy and beam candidates decode, as QA_DECODER (default: auto, the service's: our decode "
        "loop with the stacked LoRA backend)",
    )
    run.add_argument(
        "--max-input-tokens",
        type=_positive,
        default=4096,
        help="longest rendered prompt accepted, in tokens (default: 4096, as the service)",
    )
    run.add_argument(
        "--prompts",
        type=_prompts,
        default=None,
        help="comma-separated prompt styles " + _by_device(lambda p: ",".join(p.prompts)),
    )
    run.add_argument(
        "--num-beams",
        type=_positive,
        default=None,
        help="beams and outputs per prompt; 1 = greedy " + _by_device(lambda p: str(p.num_beams)),
    )
    run.add_argument(
        "--members",
        type=_positive,
        metavar="N",
        help="at most N adapters in the ensemble, the best by held-out validation F1 "
        + _by_device(lambda p: str(p.members or "all")),
    )
    run.add_argument(
        "--max-new-tokens",
        type=_positive,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"answer budget in tokens (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    run.add_argument(
        "--chunk-size",
        type=_positive,
        help="most questions per generation chunk (default: by device, ensemble.chunks.CHUNK_LIMITS)",
    )
    run.add_argument(
        "--chunk-tokens",
        type=_positive,
        help="most padded prompt tokens per generation chunk (default: by device; on the CPU chunks are "
        "also cut so no prompt is padded past a small margin)",
    )
    run.add_argument(
        "--no-strategies",
        dest="strategies",
        action="store_false",
        help="score the ensemble only (skips the extra greedy pass)",
    )
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    run.set_defaults(handler=_run)

    fit = commands.add_parser(
        "fit-vote",
        help="fit the vote on a held-out train run's candidates.jsonl and write vote.json",
        description="Grid-search the count and likelihood vote rules for mean KorQuAD F1, calibrate the "
        "chosen rule's confidence (Platt, against exact match) and write vote.json with its provenance. "
        "Only on held-out TRAIN questions: a file whose report.json says the eval split is refused.",
    )
    fit.add_argument(
        "--candidates", type=Path, metavar="FILE", required=True, help="candidates.jsonl of a qa-eval run"
    )
    fit.add_argument(
        "--out", type=Path, metavar="FILE", required=True, help="vote.json to write (e.g. adapters/<key>/)"
    )
    fit.set_defaults(handler=_fit_vote)

    again = commands.add_parser(
        "revote",
        help="re-vote a candidates.jsonl under a vote config: F1/EM of every strategy and the ECE",
    )
    again.add_argument(
        "--candidates", type=Path, metavar="FILE", required=True, help="candidates.jsonl of a qa-eval run"
    )
    again.add_argument(
        "--vote", type=Path, metavar="FILE", help="vote.json to vote with (default: the built-in VoteConfig)"
    )
    again.add_argument(
        "--out", type=Path, metavar="FILE", help="JSON to write (default: revote.json beside the candidates)"
    )
    again.set_defaults(handler=_revote)

    room = commands.add_parser(
        "headroom",
        help="what a vote could still buy from a run's members: oracles, agreement, a reranker's k-fold F1",
    )
    room.add_argument(
        "--candidates", type=Path, metavar="FILE", required=True, help="candidates.jsonl of a qa-eval run"
    )
    room.add_argument("--vote", type=Path, metavar="FILE", help="vote.json the reranker's features use")
    room.add_argument(
        "--data", type=Path, metavar="FILE", help="the run's data: contexts and questions for the reranker"
    )
    room.add_argument(
        "--rerank-folds", type=int, default=0, metavar="K", help="also cross-validate the reranker (0: no)"
    )
    room.add_argument("--out", type=Path, metavar="FILE", help="JSON to write")
    room.set_defaults(handler=_headroom)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = shlex.join(["qa-eval", *argv])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except (DataFormatError, ScoringError, ValueError, KeyError, OSError) as e:
        parser.exit(1, f"qa-eval: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
