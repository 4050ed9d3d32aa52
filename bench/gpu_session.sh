#!/usr/bin/env bash
# One GPU session as a sequence of `device` calls (see docs/benchmarks.md, "How the GPU numbers were made").
# The base model reaches the machine in parts (the working tree travels at most 64 MiB a call), so a run that
# needs no real weights (the Unsloth vs peft training throughput, on random weights in Qwen2.5-0.5B's shape) goes
# first, in the background, while the parts arrive; the runs that need the real base follow.
#
#   bash bench/gpu_session.sh start            carry .gpu-site .gpu-meta .gpu-data: unpack, start the background
#   bash bench/gpu_session.sh meta             carry .gpu-meta .gpu-data when they did not fit with .gpu-site
#   bash bench/gpu_session.sh speed            issue 5's runs on random weights, in the background
#   bash bench/gpu_session.sh latency          /answer at concurrency 1, decode loop vs generate (background)
#   bash bench/gpu_session.sh compiled         the loop with and without its step compiled (background)
#   bash bench/gpu_session.sh final            GPU tests, request phases and /answer latency, foreground
#   bash bench/gpu_session.sh fused            tests, step probe, phases, /answer, pipeline (background)
#   bash bench/gpu_session.sh profiled         the step's kernel profile, probe, phases, /answer, pipeline
#   bash bench/gpu_session.sh kernel           the one-kernel LoRA on and off, profile, phases, /answer
#   bash bench/gpu_session.sh attention        the attention kernel: tests, tuning, on and off, profile
#   bash bench/gpu_session.sh served           compiled step, /answer at concurrency 1-32, pipeline, memory
#   bash bench/gpu_session.sh shapes           /answer at concurrency 8 and 32, default shape memory and more
#   bash bench/gpu_session.sh tests            the CUDA tests on this call's tree (after `start`, same call)
#   bash bench/gpu_session.sh part N           carry .gpu-partN: one part of the base GGUF into /tmp/parts
#   bash bench/gpu_session.sh status [STEP]    what a background run printed last
#   bash bench/gpu_session.sh collect          copy the background results to $OUT
#   bash bench/gpu_session.sh backends|train|eval|http-real   the runs on the real base (source gpu_env.sh first)
set -uo pipefail
step=${1:?step}
RES=/tmp/results
DATA=/tmp/src/.gpu-data/KorQuAD_v1.0_dev.json  # copied at `start`: a later call's working tree lacks .gpu-data
mkdir -p "$RES"
runs_env() {  # what every run needs: the packed packages, this tree, no hub, the KorQuAD file
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  data=.gpu-data/KorQuAD_v1.0_dev.json
}
gpu_tests() {  # the CUDA tests, their failures' lines and the summary
  python3 -m pytest -q -m gpu tests/models/test_gpu.py -p no:cacheprovider --tb=short 2>&1 \
    | grep -E "^E |Error|passed|failed|^tests/" | head -30
}
answer_and_pipeline() {  # /answer at concurrency 1, 8 and 32 (4-bit, the default server), then the pipeline
  # against the naive loop with memory and tokens/s
  python3 -m bench.http_latency --random-init .gpu-meta --data "$data" --quantization 4bit --new-tokens 12 \
    --concurrency 1,8,32 --questions 32 --requests 24 --cell-seconds 15 --warmup 4 --out "$RES/http" 2>&1 \
    | grep -E "^\||ready in"
  echo "http done"
  python3 -m bench.serving_speed --random-init .gpu-meta --data "$data" --variants 4bit \
    --generator-kwargs '{}' --out "$RES/serving_speed" 2>&1 | grep -E "^\|"
}
case "$step" in
  start)  # carry .gpu-site (and .gpu-meta .gpu-data when they fit the 64 MiB a call; else `meta` next)
    mkdir -p /tmp/site && tar -C /tmp/site -xJf .gpu-site/site.tar.xz && touch /tmp/site/.unpacked
    rm -rf /tmp/src && mkdir -p /tmp/src && cp -r app engine models ensemble evaluation training bench recipes \
      pyproject.toml /tmp/src/
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    if [ -d .gpu-meta ]; then
      cp -r .gpu-meta .gpu-data /tmp/src/
      (cd /tmp/src && setsid nohup bash bench/gpu_session.sh background >"$RES/background.log" 2>&1 &)
      sleep 5; tail -5 "$RES/background.log"
    fi
    ;;
  meta)  # carry .gpu-meta .gpu-data: the random-init shape and the KorQuAD file, into /tmp/src
    cp -r .gpu-meta .gpu-data /tmp/src/ && ls /tmp/src
    ;;
  background)  # while the parts arrive: the training backends on random weights in the real base's shape
    runs_env
    python3 -c "from pathlib import Path; from bench.workload import random_init_base as r
r(Path('.gpu-meta'), Path('/tmp/randbase'), device='cuda')" && echo "random base written"
    python3 -m bench.train_backends --steps 25 --timeout 240 --set train.base=/tmp/randbase \
      --set train.data="$data" --set train.cache_dir=/tmp/cache --out "$RES/backends" && echo "backends done"
    echo "background finished"
    ;;
  serving-random)  # serving speed and HTTP latency on random weights in the 0.5B shape
    runs_env
    python3 -m bench.serving_speed --random-init .gpu-meta --data "$data" --variants 4bit,bf16 \
      --generator-kwargs '{"lora_backend": "stacked"}' --generator-kwargs '{"lora_backend": "peft"}' \
      --out "$RES/serving_speed" && echo "serving_speed done"
    python3 -m bench.http_latency --random-init .gpu-meta --data "$data" --new-tokens 12 \
      --out "$RES/http_latency" && echo "http_latency done"
    ;;
  speed|latency|compiled|kernel|fused|profiled|attention|served|shapes)  # STEP-runs below, in the background, on this call's code
    # (poll with `status STEP` from inside a later call, then `collect`)
    (cd /tmp/src && rm -rf app engine models ensemble bench tests && \
      cp -r "$OLDPWD"/{app,engine,models,ensemble,bench,tests} . \
      && setsid nohup bash bench/gpu_session.sh "$step-runs" >"$RES/$step.log" 2>&1 &)
    sleep 3; tail -3 "$RES/$step.log"
    ;;
  speed-runs)
    runs_env
    python3 -m pytest -q -m gpu tests/models/test_gpu.py -p no:cacheprovider 2>&1 | tail -5
    python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants bf16 \
      --modes eager,compiled,loop,loop-graphs --batches 1x1,6x3 --tokens 32 --repeats 3 --out "$RES/probe-bf16"
    python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants 4bit \
      --modes eager,loop,loop-graphs --batches 1x1,6x3 --tokens 32 --repeats 3 --out "$RES/probe-4bit"
    echo "probes done"
    for q in none 4bit; do for dec in hf loop; do
      python3 -m bench.http_latency --random-init .gpu-meta --data "$data" --quantization $q --new-tokens 12 \
        --concurrency 1,8,32 --questions 32 --requests 24 --cell-seconds 20 --warmup 4 --server-env QA_DECODER=$dec \
        --out "$RES/http-$q-$dec"
    done; done
    echo "http done"
    python3 -m bench.serving_speed --random-init .gpu-meta --data "$data" --variants 4bit,bf16 \
      --generator-kwargs '{"decoder": "hf"}' --generator-kwargs '{}' --out "$RES/serving_speed"
    echo "speed finished"
    ;;
  compiled-runs)
    runs_env
    python3 -m pytest -q -m gpu tests/models/test_gpu.py -p no:cacheprovider 2>&1 | tail -5
    for v in bf16 4bit; do
      python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants $v \
        --modes loop-graphs,loop-compiled --batches 1x1,6x3 --tokens 32 --repeats 3 --out "$RES/probe-$v"
    done
    echo "probes done"
    for c in false true; do
      python3 -m bench.http_latency --random-init .gpu-meta --data "$data" --quantization 4bit --new-tokens 12 \
        --concurrency 1,8,32 --questions 32 --requests 24 --cell-seconds 15 --warmup 4 \
        --server-env QA_COMPILE=$c --out "$RES/http-compile-$c" && echo "http compile=$c done"
    done
    python3 -m bench.serving_speed --random-init .gpu-meta --data "$data" --variants 4bit \
      --generator-kwargs '{"decoder": "hf"}' --generator-kwargs '{}' --generator-kwargs '{"compile_backend": "inductor"}' \
      --out "$RES/serving_speed"
    echo "compiled finished"
    ;;
  tests)
    rm -rf /tmp/src/{app,engine,models,ensemble,bench,tests} && cp -r {app,engine,models,ensemble,bench,tests} /tmp/src/
    cd /tmp/src && runs_env
    gpu_tests
    python3 -m pytest -q tests/models/test_attention_kernel.py tests/models/test_lora_kernel.py -k serves \
      -p no:cacheprovider 2>&1 | tail -2
    ;;
  final)  # GPU tests, one request's phases, /answer latency: the default server (decode loop, prefill graphs)
    rm -rf /tmp/src/{app,engine,models,ensemble,bench,tests} && cp -r {app,engine,models,ensemble,bench,tests} /tmp/src/
    cd /tmp/src && runs_env
    gpu_tests
    for kind in ensemble greedy; do
      python3 -m bench.request_phases --random-init .gpu-meta --data "$data" --kind $kind --out "$OUT/phases-$kind" \
        2>&1 | grep -E "^\|"
    done
    python3 -m bench.http_latency --random-init .gpu-meta --data "$data" --quantization 4bit --new-tokens 12 \
      --concurrency 1,8,32 --questions 32 --requests 24 --cell-seconds 15 --warmup 4 --out "$OUT/http" 2>&1 \
      | grep -E "^\||ready in"
    ;;
  kernel-runs)
    runs_env
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    gpu_tests
    for k in false true; do
      QA_LORA_KERNEL=$k python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants 4bit,bf16 \
        --modes loop-graphs --batches 1x1,6x3 --tokens 32 --repeats 3 --out "$RES/probe-kernel-$k" 2>&1 \
        | grep -E "^\|"
    done
    python3 -m bench.step_profile --random-init .gpu-meta --data "$data" --graphs on --out "$RES/profile-1x1" \
      2>&1 | grep -E "^\|" | head -12
    python3 -m bench.request_phases --random-init .gpu-meta --data "$data" --kind ensemble \
      --out "$RES/phases-ensemble" 2>&1 | grep -E "^\|"
    python3 -m bench.http_latency --random-init .gpu-meta --data "$data" --quantization 4bit --new-tokens 12 \
      --concurrency 1 --questions 32 --requests 24 --warmup 4 --out "$RES/http" 2>&1 | grep -E "^\||ready in"
    echo "http done"
    python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants 4bit \
      --modes loop-compiled --batches 1x1 --tokens 32 --repeats 3 --out "$RES/probe-compiled" 2>&1 | grep -E "^\|"
    echo "kernel finished"
    ;;
  attention-runs)
    runs_env
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    gpu_tests
    python3 -m bench.attention_kernel_tune --out "$RES/attention-tune" 2>&1 | grep -E "^\|"
    python3 -m bench.lora_kernel_tune --rows 1,18 --out "$RES/lora-tune" 2>&1 | grep -E "^\|"
    for k in false true; do
      python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants 4bit,bf16 \
        --modes loop-graphs --batches 1x1,6x3 --tokens 32 --repeats 3 --generator-kwargs "{\"attention_kernel\": $k}" \
        --out "$RES/probe-attention-$k" 2>&1 | grep -E "^\|"
    done
    python3 -m bench.step_profile --random-init .gpu-meta --data "$data" --graphs on --out "$RES/profile-1x1" \
      2>&1 | grep -E "^\|" | head -24
    echo "attention finished"
    ;;
  served-runs)
    runs_env
    python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants 4bit \
      --modes loop-compiled --batches 1x1,6x3 --tokens 32 --repeats 3 --out "$RES/probe-compiled" 2>&1 | grep -E "^\|"
    answer_and_pipeline
    echo "served finished"
    ;;
  shapes-runs)  # do the decode loop's shapes thrash under load? (its log names each new shape and evictions)
    runs_env
    for mb in default 40000; do
      env_mb=(); [ "$mb" != default ] && env_mb=(--server-env "QA_DECODE_CACHE_MB=$mb")
      mkdir -p "$RES/shapes-$mb"
      python3 -m bench.http_latency --random-init .gpu-meta --data "$data" --quantization 4bit --new-tokens 12 \
        --kinds ensemble --concurrency 8,32 --questions 48 --requests 48 --cell-seconds 15 --warmup 4 \
        --server-env QA_LOG_LEVEL=info --server-env QA_LOG_FORMAT=text "${env_mb[@]}" \
        --server-log "$RES/shapes-$mb/server.log" --out "$RES/shapes-$mb" 2>&1 | grep -E "^\||ready in"
      grep -c "new step shape" "$RES/shapes-$mb/server.log"; grep "new step shape" "$RES/shapes-$mb/server.log" | tail -4
    done
    echo "shapes finished"
    ;;
  profiled-runs)
    runs_env
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    for b in 1x1 6x3; do
      python3 -m bench.step_profile --random-init .gpu-meta --data "$data" --rows ${b%x*} --beams ${b#*x} \
        --out "$RES/profile-$b" 2>&1 | grep -E "^\|"
    done
    python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants 4bit,bf16 \
      --modes loop-graphs --batches 1x1,6x3 --tokens 32 --repeats 3 --out "$RES/probe" 2>&1 | grep -E "^\|"
    python3 -m bench.request_phases --random-init .gpu-meta --data "$data" --kind ensemble \
      --out "$RES/phases-ensemble" 2>&1 | grep -E "^\|"
    answer_and_pipeline
    echo "profiled finished"
    ;;
  fused-runs)
    runs_env
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    gpu_tests
    python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants 4bit \
      --modes loop-graphs,loop-compiled --batches 1x1,6x3 --tokens 32 --repeats 3 --out "$RES/probe-4bit" 2>&1 \
      | grep -E "^\|"
    python3 -m bench.compile_probe --random-init .gpu-meta --data "$data" --variants bf16 \
      --modes loop-graphs --batches 1x1,6x3 --tokens 32 --repeats 3 --out "$RES/probe-bf16" 2>&1 | grep -E "^\|"
    echo "probes done"
    for kind in ensemble greedy; do
      python3 -m bench.request_phases --random-init .gpu-meta --data "$data" --kind $kind \
        --out "$RES/phases-$kind" 2>&1 | grep -E "^\|"
    done
    answer_and_pipeline
    echo "fused finished"
    ;;
  latency-runs)
    runs_env
    for dec in loop hf; do
      python3 -m bench.http_latency --random-init .gpu-meta --data "$data" \
        --quantization 4bit --new-tokens 12 --concurrency 1 --questions 32 --requests 24 --warmup 4 \
        --server-env QA_DECODER=$dec --out "$RES/latency-$dec" && echo "latency $dec done"
    done
    ;;
  part)
    mkdir -p /tmp/parts && cp ".gpu-part$2/part" "/tmp/parts/$(printf %03d "$2")" && ls /tmp/parts | wc -l
    tail -3 "$RES/background.log"
    ;;
  status)
    tail -20 "$RES/${2:-background}.log"; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    ;;
  collect)
    cp "$RES/background.log" "$OUT/" 2>/dev/null
    for d in "$RES"/*/; do [ -d "$d" ] && tar -C "$RES" -czf "$OUT/$(basename "$d").tgz" "$(basename "$d")"; done
    ls -la "$OUT"
    ;;
  backends)  # Unsloth vs peft + bitsandbytes, same member, same steps, one subprocess each
    python3 -m bench.train_backends --steps 25 --timeout 240 --set train.data="$DATA" \
      --set train.cache_dir=/tmp/cache --out "$OUT"
    ;;
  train)  # the members named in $2 (comma-separated), in parallel processes, into /tmp/adapters
    # (BACKEND=unsloth|peft|auto, default peft; TRAIN_SET="--set k=v ..." adds recipe overrides)
    for m in ${2//,/ }; do
      setsid nohup python3 -m training.cli --config recipes/korquad-qwen0.5b.toml --only "$m" \
        --set train.backend="${BACKEND:-peft}" --set train.data="$DATA" --set train.cache_dir=/tmp/cache \
        --set train.output_dir=/tmp/adapters --set train.progress=false ${TRAIN_SET:-} >"$RES/train-$m.log" 2>&1 &
    done
    sleep 2; echo "training ${2}"
    ;;
  wait)  # print progress until no qa-train / qa-eval process is left or $2 seconds passed
    end=$((SECONDS + ${2:-540}))
    while pgrep -f "training.cli|evaluation.cli" >/dev/null && [ $SECONDS -lt $end ]; do sleep 15; done
    for f in "$RES"/*.log; do echo "== $f"; tail -4 "$f"; done
    ;;
  eval)  # every adapter in $2 (a folder) alone and voted, all 1,510 eval questions, in the background
    setsid nohup python3 -m evaluation.cli run --data "$DATA" --split eval \
      --cache-dir /tmp/cache --adapters-dir "$2" --chunk-size 64 --no-progress --out "$RES/eval" \
      >"$RES/eval.log" 2>&1 &
    sleep 2; echo "eval started"
    ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
