"""The serving benchmarks (bench/serving_speed.py, bench/http_latency.py) run end to end in --smoke mode: the
tiny random model on the CPU, random adapters, a few questions. Their numbers mean nothing here; what is
checked is that every measurement ran and the JSON a GPU run will be read from has its keys and sane values.

`bench/` is not an installed package, so the scripts are imported from the repository root. To stay fast
they use the session's tiny model folder (tests/conftest.py) and one prompt variant (the principled prompt is
long in the tiny tokenizer), on a two-paragraph SQuAD-layout file written here (our own text).
"""

import importlib
import json
import math
import signal
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = {
    "version": "bench-smoke",
    "data": [
        {
            "title": "bench smoke",
            "paragraphs": [
                {
                    "context": "The town library opened in 1998 and holds 12,000 books.",
                    "qas": [
                        {
                            "id": "s1",
                            "question": "When did the library open?",
                            "answers": [{"text": "1998", "answer_start": 27}],
                        }
                    ],
                },
                {
                    "context": "Mina runs five kilometres every morning before work.",
                    "qas": [
                        {
                            "id": "s2",
                            "question": "How far does Mina run?",
                            "answers": [{"text": "five kilometres", "answer_start": 10}],
                        }
                    ],
                },
            ],
        }
    ],
}


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """Import `bench.<name>` from the repository root."""
    monkeypatch.syspath_prepend(str(ROOT))

    def load(name: str) -> ModuleType:
        return importlib.import_module(f"bench.{name}")

    return load


@pytest.fixture
def questions_file(tmp_path: Path) -> Path:
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(QUESTIONS), encoding="utf-8")
    return path


def positive(value: object) -> bool:
    return finite(value) and value > 0


def finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def smoke_args(model: Path, questions: Path, out: Path) -> list[str]:
    return [
        "--smoke",
        "--model",
        str(model),
        "--prompts",
        "zero-shot",
        "--data",
        str(questions),
        "--split",
        "all",
        "--out",
        str(out),
    ]


def test_serving_speed_smoke_writes_every_measurement(
    bench, tiny_model_dir: Path, questions_file: Path, tmp_path: Path, capsys
):
    out = tmp_path / "speed"
    code = bench("serving_speed").main(smoke_args(tiny_model_dir, questions_file, out))
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "serving_speed.json").read_text(encoding="utf-8"))
    assert (out / "serving_speed.md").read_text(encoding="utf-8") in capsys.readouterr().out

    assert {"date", "card", "torch", "transformers", "peft", "bitsandbytes"} <= report["environment"].keys()
    assert report["candidates_per_question"] == 3 * 1 * 3  # adapters x prompts x beams
    assert report["synthetic_adapters"] == report["adapters"] and len(report["adapters"]) == 3
    [row] = report["rows"]
    assert row["variant"] == "fp32" and "error" not in row

    pipeline, naive = row["pipeline"], row["naive"]
    assert pipeline["candidates"] == pipeline["questions"] * 9 and pipeline["generate_calls"] == 1
    assert naive["candidates"] == naive["questions"] * 9 and naive["generate_calls"] == naive["questions"] * 3
    assert all(positive(x) for x in (pipeline["questions_per_s"], naive["questions_per_s"], row["speedup"]))

    assert [m["adapters"] for m in row["memory"]] == [1, 3]
    for m in row["memory"]:
        assert positive(m["measured_bytes"]) and positive(m["ratio"]) and positive(m["adapter_file_bytes"])
        assert m["base_plus_files_bytes"] == row["base_bytes"] + m["adapter_file_bytes"]
    one, three = row["memory"]
    assert three["adapter_measured_bytes"] > one["adapter_measured_bytes"] > 0

    decode = {d["row"]: d for d in row["decode"]}
    assert decode.keys() == {"base alone", "base row, 1 adapter resident", "adapter row"}
    for d in decode.values():
        assert positive(d["one_token_call_ms"]) and d["ms_per_token"] >= 0 and positive(d["bytes_per_step"])
        assert d["floor_ms"] is None  # no bandwidth is known for a CPU
    assert decode["adapter row"]["bytes_per_step"] > decode["base alone"]["bytes_per_step"]


def test_http_latency_smoke_answers_every_request(
    bench, tiny_model_dir: Path, questions_file: Path, tmp_path: Path, capsys
):
    out = tmp_path / "http"
    code = bench("http_latency").main(smoke_args(tiny_model_dir, questions_file, out))
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "http_latency.json").read_text(encoding="utf-8"))

    assert report["server"]["device"] == "cpu"
    assert report["server"]["adapters"] == ["bench-lora-01", "bench-lora-02"]
    assert report["server"]["exit_code"] in (0, -signal.SIGTERM)
    assert positive(report["server"]["ready_seconds"])
    cells = {(c["kind"], c["concurrency"]): c for c in report["cells"]}
    assert cells.keys() == {("ensemble", 1), ("ensemble", 2), ("greedy", 1), ("greedy", 2)}
    for cell in cells.values():
        assert cell["ok"] == cell["requests"] == 2 and cell["statuses"] == {"200": 2}
        assert positive(cell["requests_per_s"])
        latency = cell["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
        assert positive(cell["server_elapsed_ms"]["p50"])
        assert cell["server_elapsed_ms"]["p50"] <= latency["p99"]
        metrics = cell["server_metrics"]  # from the server's /metrics
        assert metrics["passes"] >= 1 and metrics["generate_calls"] >= 1
        assert 1 <= metrics["questions_per_pass"] <= 2 and metrics["tokens_per_sequence"] > 0
        assert cell["server_cpu"]["cpu_seconds"] >= 0
    # from /proc: the server's threads, counted in clock ticks (10 ms), so a cell of two ~20 ms requests
    # may read 0; the four cells together do not
    cpus = [cell["server_cpu"] for cell in cells.values()]
    assert sum(c["cpu_seconds"] for c in cpus) > 0
    assert any(c["cpu_seconds"] > 0 and len(c["busiest_threads_per_wall_second"]) >= 1 for c in cpus)


def test_compile_probe_smoke(tmp_path) -> None:
    from bench import compile_probe

    assert compile_probe.main(["--smoke", "--batches", "1x1,2x2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "compile_probe.json").read_text())
    rows = {(row["batch"], row["mode"]): row for row in report["rows"]}
    modes = ("eager", "compiled", "loop", "loop-compiled")  # loop-graphs: CUDA only
    assert rows.keys() == {(batch, mode) for batch in ("1x1", "2x2") for mode in modes}
    # a difference of two timed runs of a tiny model: its sign is noise on a busy CPU (the GPU numbers are
    # docs/benchmarks.md's); the smoke test checks that every cell was measured
    assert all(finite(row["ms_per_token"]) and finite(row["first_call_s"]) for row in rows.values())
    assert all(row["speedup"] is None or finite(row["speedup"]) for row in rows.values())


def test_request_phases_smoke(tmp_path) -> None:
    from bench import request_phases

    assert request_phases.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "request_phases.json").read_text())
    phases = report["median_ms"]
    assert positive(phases["prefill"]) and positive(phases["steps"]) and positive(phases["tokenize"])
    assert len(report["requests"]) == 2
    for request in report["requests"]:  # the phases add up to the whole request
        parts = sum(request[p] for p in request_phases.PHASES)
        assert parts == pytest.approx(request["total"]) and request["rest"] >= 0


def test_request_phases_smoke_with_the_likelihood_vote_and_a_profile(tmp_path) -> None:
    from bench import request_phases

    argv = ["--smoke", "--rule", "likelihood", "--profile", str(tmp_path / "profile"), "--out", str(tmp_path)]
    assert request_phases.main(argv) == 0
    report = json.loads((tmp_path / "request_phases.json").read_text())
    # every answer is scored on the prefill the decoding kept: none is prefilled a second time
    assert positive(report["median_ms"]["score-tails"]) and report["median_ms"]["score-prefill"] == 0
    for request in report["requests"]:
        assert sum(request[p] for p in request_phases.PHASES) == pytest.approx(request["total"])
    tables = (tmp_path / "profile" / "ops_by_host_time.txt").read_text()
    assert "phase:score-tails" in tables and (tmp_path / "profile" / "trace.json.gz").stat().st_size > 0


def test_serving_speed_smoke_with_the_decode_loop(
    bench, tiny_model_dir: Path, questions_file: Path, tmp_path: Path, capsys
):
    out = tmp_path / "speed-loop"
    argv = smoke_args(tiny_model_dir, questions_file, out) + ["--generator-kwargs", '{"decoder": "loop"}']
    assert bench("serving_speed").main(argv + ["--memory-adapters", "1"]) == 0, capsys.readouterr()
    [row] = json.loads((out / "serving_speed.json").read_text(encoding="utf-8"))["rows"]
    assert row["generator_kwargs"] == {"decoder": "loop"} and "error" not in row
    assert row["pipeline"]["candidates"] == row["pipeline"]["questions"] * 9
    assert all(d["ms_per_token"] >= 0 for d in row["decode"])


def test_http_latency_smoke_with_the_decode_loop(
    bench, tiny_model_dir: Path, questions_file: Path, tmp_path: Path, capsys
):
    out = tmp_path / "http-loop"
    argv = smoke_args(tiny_model_dir, questions_file, out)
    argv += ["--server-env", "QA_DECODER=loop", "--concurrency", "1", "--kinds", "ensemble"]
    assert bench("http_latency").main(argv) == 0, capsys.readouterr()
    report = json.loads((out / "http_latency.json").read_text(encoding="utf-8"))
    assert report["server"]["env"]["QA_DECODER"] == "loop"
    [cell] = report["cells"]
    assert cell["ok"] == cell["requests"] == 2


def test_step_ops_counts_a_step_by_module(tmp_path) -> None:
    step_ops = importlib.import_module("bench.step_ops")
    assert step_ops.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "step_ops.json").read_text(encoding="utf-8"))
    per_step = report["per_step"]
    # tiny-random, 2 layers, on the CPU (no Triton kernel); per layer the stacked LoRA runs for q/k/v one base
    # matmul (their weights fused), one A matmul, one mask multiply and a B each; for gate/up one base, one A,
    # one mask and a B each; for o and for down an A, a mask and an addmm (B and the add): 6 + 5 + 3 + 3
    assert per_step["StackedLoraLinear"] == 2 * 17
    assert per_step["Linear"] == 2 * 2 + 1  # the base of o and down (not fused: no siblings), the head
    assert per_step["token choice and loop bookkeeping"] > 0
    assert report["total"] == pytest.approx(sum(per_step.values()))


def test_step_profile_splits_a_step_by_kind(tmp_path) -> None:
    step_profile = importlib.import_module("bench.step_profile")
    assert step_profile.main(["--smoke", "--out", str(tmp_path)]) == 0
    [result] = json.loads((tmp_path / "step_profile.json").read_text(encoding="utf-8"))["results"].values()
    assert result["kernels"] > 0 and result["wall_ms"] > 0
    assert sum(k["kernels"] for k in result["by_kind"].values()) == pytest.approx(result["kernels"], abs=0.5)
    assert step_profile.kind_of("void kgemm_4bit_inference_naive<__nv_bfloat16, 128, 16>") == (
        "4-bit matmul (bitsandbytes)"
    )
    assert step_profile.kind_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n") == "matmul (cuBLAS / CUTLASS)"
    cudnn_sdpa = "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16"  # names its arch too
    assert step_profile.kind_of(cudnn_sdpa) == "attention (SDPA)"
    assert step_profile.kind_of("_attend_kernel") == "attention (models.kernels.attention_kernel)"
    assert step_profile.kind_of("_shrink_kernel") == "stacked LoRA (models.kernels.lora_kernel)"
    softmax = "void at::native::cunn_SoftMaxForward<4, float>"
    assert step_profile.kind_of(softmax) == "log-softmax of the logits"


def test_training_curves_tabulates_and_plots_each_member(tmp_path, capsys) -> None:
    from bench import training_curves

    log = tmp_path / "m1.train_log.jsonl"
    events = [
        {"event": "eval", "step": 0, "epoch": 0.0, "f1": 60.0},
        {"event": "step", "step": 1, "epoch": 0.05, "loss": 0.7},
        {"event": "eval", "step": 2, "epoch": 0.1, "f1": 73.5},
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    assert training_curves.main([str(log), "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert "| m1 | 60.0 | 73.5 | 73.5 |" in table
    assert (tmp_path / "out" / "training_curves.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "out" / "training_curves.json").read_text("utf-8"))
    assert saved["m1"]["f1"] == [[0.0, 60.0], [0.1, 73.5]] and saved["m1"]["loss"] == [[0.05, 0.7]]


def test_cpu_path_smoke_times_answer_and_every_batch_cell(
    bench, tiny_model_dir: Path, questions_file: Path, tmp_path: Path, capsys
):
    out = tmp_path / "cpu"
    assert bench("cpu_path").main(smoke_args(tiny_model_dir, questions_file, out)) == 0, capsys.readouterr()
    report = json.loads((out / "cpu_path.json").read_text(encoding="utf-8"))
    assert (out / "cpu_path.md").read_text(encoding="utf-8") in capsys.readouterr().out
    assert report["environment"]["device"] == "cpu" and report["questions"] == 2
    one, many = report["prefill_decode"]
    assert (one["rows"], many["rows"]) == (1, 2)
    assert all(
        positive(k["prefill_tokens_per_s"]) and positive(k["decode_tokens_per_s"]) for k in (one, many)
    )
    assert positive(report["answer"]["seconds_per_question"])
    cells = {c["cell"]: c for c in report["cells"]}
    assert cells.keys() == {"default", "rows16", "beam"}
    for cell in cells.values():
        assert cell["failed_rows"] == 0 and cell["same_answers_as_alone"] == 2
        assert positive(cell["main_seconds_per_question"])
    assert cells["rows16"]["limits"] == {"rows": 16, "tokens": None, "margin": None, "slack": 0}
    # greedy: no second pass; beams: a greedy pass per chunk, each decoded on its beam pass's prefill
    assert cells["default"]["greedy_seconds"] == 0 and cells["default"]["prefills_reused"] == 0
    beam = cells["beam"]
    assert beam["passes"] == {"greedy:*": "greedy", "*": "main"}
    assert beam["generate_calls"] == 2 and beam["prefills_reused"] == 1 and positive(beam["greedy_seconds"])
