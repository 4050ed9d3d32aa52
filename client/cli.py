"""`qa`: ask the qa-ensemble service from a shell. `qa answer` asks one question; `qa batch` answers a file.

The service URL and API key come from `--url` / `--api-key-env`, else from the QA_URL and QA_API_KEY
environment variables (this is a separate client program, so it reads its own environment; the service's
settings are not involved). `qa batch` uploads the file, follows the job with a progress bar when the server
queues it, and writes the `id,answer` submission CSV (an inline result is written the same way).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client.http import QAClient, QAClientError

DEFAULT_URL = "http://127.0.0.1:8000"


def _answer(client: QAClient, args: argparse.Namespace) -> int:
    context = Path(args.context).read_text(encoding="utf-8")
    result = client.answer(context, args.question, explain=args.explain)
    if args.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    else:
        answer = "(abstained)" if result.get("abstained") else result["answer"]
        sys.stdout.write(f"{answer}\t(confidence {result['confidence']:.2f})\n")
    return 0


def _write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    with out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("id", "answer"))
        writer.writerows((row["id"], row["answer"] or "") for row in rows)  # abstained: null -> ""


def _batch(client: QAClient, args: argparse.Namespace) -> int:
    out = Path(args.output)
    submitted = client.batch_file(args.file, format=args.format)
    if "job_id" not in submitted:  # answered inline (200)
        _write_rows(submitted["rows"], out)
        sys.stderr.write(f"{len(submitted['rows'])} rows answered -> {out}\n")
        return 0
    job_id = submitted["job_id"]
    with tqdm(total=submitted["total"], unit="row", desc=f"job {job_id}", disable=args.quiet) as bar:

        def progress(status: dict[str, Any]) -> None:
            bar.n = status["done"]
            bar.refresh()

        final = client.wait(job_id, poll=args.poll, on_progress=progress)
    if final["status"] != "done":
        sys.stderr.write(f"qa: job {job_id} {final['status']}: {final.get('error') or ''}\n")
        return 1
    out.write_text(str(client.result(job_id, format="csv")), encoding="utf-8", newline="")
    sys.stderr.write(f"{final['total']} rows answered ({final['failed_rows']} failed) -> {out}\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa", description=__doc__)
    parser.add_argument("--url", help=f"service URL (default: $QA_URL, else {DEFAULT_URL})")
    parser.add_argument(
        "--api-key-env", default="QA_API_KEY", help="environment variable holding the API key (QA_API_KEY)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP request")
    commands = parser.add_subparsers(dest="command", required=True)
    answer = commands.add_parser("answer", help="answer one question about a context file")
    answer.add_argument("--context", required=True, help="UTF-8 text file holding the context")
    answer.add_argument("--question", required=True)
    answer.add_argument("--explain", action="store_true", help="ask for every candidate's provenance")
    answer.add_argument("--json", action="store_true", help="print the whole JSON response")
    batch = commands.add_parser("batch", help="answer a test file, write the id,answer CSV")
    batch.add_argument("file", help="SQuAD/KorQuAD JSON, CSV or JSON Lines")
    batch.add_argument("-o", "--output", required=True, help="where the id,answer CSV is written")
    batch.add_argument("--format", default="auto", choices=["auto", "squad", "csv", "jsonl"])
    batch.add_argument("--poll", type=float, default=0.5, help="seconds between job status checks")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = args.url or os.environ.get("QA_URL") or DEFAULT_URL
    api_key = os.environ.get(args.api_key_env) or None
    run = _answer if args.command == "answer" else _batch
    try:
        with QAClient(url, api_key=api_key, timeout=args.timeout) as client:
            return run(client, args)
    except (QAClientError, OSError) as exc:
        sys.stderr.write(f"qa: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
