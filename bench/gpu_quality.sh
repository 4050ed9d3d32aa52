#!/usr/bin/env bash
# The answer-quality GPU sessions (issues 16, 17) as a sequence of `device` calls, made back to back (the machine
# goes back 30 s after a call): the real Qwen2.5-Coder-1.5B GGUF arrives in parts, is converted once, then a
# background job runs: `train` (session 7: every member of recipes/korquad-qwen1.5b.toml side by side with the
# experiments beside them, then the eval runs) or `evidence` (session 8: the shipped members' candidates with
# their likelihoods under every member, Unsloth against peft, the CPU default in float32, the vote's cost).
# See docs/benchmarks.md ("Session 7", "Session 8").
#
#   bash bench/gpu_quality.sh start        carry .gpu-site .gpu-data [.gpu-part1]: packages, data [, part 1]
#   bash bench/gpu_quality.sh part N       carry .gpu-partN: one part of the GGUF into /tmp/parts
#   bash bench/gpu_quality.sh convert JOB  assemble + check sha256, convert once, start JOB in the background
#   bash bench/gpu_quality.sh status       the training curves so far, the eval reports, GPU memory
#   bash bench/gpu_quality.sh backends     Unsloth against peft on the real base, same member and steps (idle card)
#   bash bench/gpu_quality.sh collect      adapters and reports into $OUT (at most 8 files of 16 MiB)
#   bash bench/gpu_quality.sh sync         /tmp/src again from the carried .gpu-src.tar (newer code, same card)
#   bash bench/gpu_quality.sh results      the reports and the xz'd candidates of every run into $OUT
#
# The code a job runs is /tmp/src: `git archive HEAD` without adapters/ in .gpu-src.tar when it is carried
# (`git archive -o .gpu-src.tar HEAD $(git ls-files | grep -v ^adapters/ | cut -d/ -f1 | sort -u)`), so
# uncommitted edits in the working tree never reach a run; the adapters come from the carried tree.
#
# `train` (background, from the code the convert call carried) runs, as separate processes on the one card:
#   - the recipe's three members (unsloth), written to /tmp/out/ship;
#   - q15-zs-s1 again with the peft backend (the same member and steps: the curves and throughput compared);
#   - q15-zs-s1 again at r=8 (what the r=4 size budget cost in F1);
#   - the Unsloth GPU test (a padded validation batch longer than train.max_seq_len);
# then, once the three members are written, the eval runs (qa-eval run, the service's code):
#   eval-ens   the shipped GPU default: 3 members x 2 prompts x 3 beams, 4-bit, every strategy scored
#   eval-zs    the base alone, greedy zero-shot, 4-bit
#   eval-cpu   the members greedy over both prompts in float32 without quantization (the CPU's arithmetic)
#   eval-r8    the r=8 twin alone, greedy
#   holdout    the GPU default on the held-out train articles (candidates.jsonl for fitting the vote)
#
# `evidence` (background, the shipped adapters carried in the tree) runs on the one card:
#   - backends: Unsloth against peft, the same member and steps, while the card is idle;
#   - holdout-lik, eval-lik: the GPU default plan with the likelihood vote (every distinct candidate scored
#     under every member and prompt), held-out train articles then the eval split: candidates.jsonl with the
#     likelihoods for `qa-eval fit-vote` (held-out) and `qa-eval revote` (eval, never fitted on);
#   - eval-cpu: the CPU's default plan (one member, zero-shot, greedy) in float32 without quantization;
#   - latency-count, latency-likelihood: /answer of the full set at concurrency 1 and 8, each rule from a
#     vote.json in a copy of the adapters folder, on the idle card.
#
# `s9` (background, session 9): where a request's time goes on the idle card (`bench.request_phases` with the
# shipped members, 4-bit and bf16, count and the shipped likelihood vote, a torch.profiler run of the latter in
# bf16), then the GPU default plan with the shipped vote in bf16 without quantization, held-out train articles
# and eval split side by side (candidates with likelihoods: what the vote is fitted on and checked on).
# `s11` (background, session 11, issue 20): training throughput on the idle card, the same member and examples
# through each path (`bench.train_backends`: peft and Unsloth with the loop, Unsloth with TRL's SFTTrainer
# padded, padding-free, packed, one micro-batch of 16, without gradient checkpointing); then the recipe's three
# members through the SFTTrainer (the new default) side by side, with q15-zs-s1 through the loop beside them
# (its validation curve's twin, same seed and data), and the eval split scored with the three new members: the
# recipe's wall time with its evaluation.
# `latency` (background): /answer of the full set at concurrency 1 and 8, {bf16, 4-bit} x {count, likelihood}.
set -uo pipefail
step=${1:?step}
RES=/tmp/results
SRC=/tmp/src
DATA=/tmp/data/KorQuAD_v1.0_dev.json
SHA=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
KEY=qwen2.5-coder-1.5b
RECIPE=$SRC/recipes/korquad-qwen1.5b.toml
mkdir -p "$RES"
env_runs() {
  export PYTHONPATH=/tmp/site:$SRC PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True TOKENIZERS_PARALLELISM=false
}
train_one() {  # NAME OUT [--set ...]: one member in its own process, cwd and unsloth compile cache
  local name=$1 out=$2; shift 2
  mkdir -p "/tmp/run/$name"
  (cd "/tmp/run/$name" && UNSLOTH_COMPILE_LOCATION="/tmp/run/$name/ucache" python3 -m training.cli \
    --config "$RECIPE" --only "${name%%@*}" --set train.data="$DATA" --set train.cache_dir=/tmp/cache \
    --set train.progress=false --set train.output_dir="$out" "$@" >"$RES/train-$name.log" 2>&1; \
    echo "exit $?" >>"$RES/train-$name.log")
}
eval_run() {  # OUT ARGS...: one qa-eval run on the eval split unless ARGS say otherwise
  local out=$1; shift
  python3 -m evaluation.cli run --data "$DATA" --model "$KEY" --cache-dir /tmp/cache --chunk-size 64 \
    --no-progress --out "$RES/$out" "$@" >"$RES/$out.log" 2>&1
  echo "exit $?" >>"$RES/$out.log"
}
case "$step" in
  start)
    mkdir -p /tmp/site /tmp/parts /tmp/data && tar -C /tmp/site -xJf .gpu-site/site.tar.xz
    cp .gpu-data/* /tmp/data/ && { [ ! -d .gpu-part1 ] || cp .gpu-part1/part /tmp/parts/001; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; ls /tmp/parts | wc -l
    ;;
  part)
    n=${2:?part number}; cp ".gpu-part$n/part" "/tmp/parts/$(printf %03d "$n")" && ls /tmp/parts | wc -l
    ;;
  convert)
    cat /tmp/parts/* >/tmp/q15.gguf && echo "$SHA  /tmp/q15.gguf" | sha256sum -c || exit 1
    bash bench/gpu_quality.sh sync
    env_runs
    t0=$(date +%s)
    python3 -m models.base.cli fetch "$KEY" --cache-dir /tmp/cache --gguf /tmp/q15.gguf 2>&1 | tail -2
    echo "converted in $(( $(date +%s) - t0 )) s"
    job=${2:-train}
    (cd "$SRC" && setsid nohup bash bench/gpu_quality.sh "$job" >"$RES/$job.log" 2>&1 &)
    sleep 3; cat "$RES/$job.log"
    ;;
  sync)
    rm -rf "$SRC" && mkdir -p "$SRC"
    if [ -f .gpu-src.tar ]; then tar -C "$SRC" -xf .gpu-src.tar && cp -r adapters "$SRC"/
    else cp -r app bounded_json engine models ensemble evaluation training bench recipes tests adapters pyproject.toml "$SRC"/
    fi
    echo "src: $(find "$SRC" -name '*.py' | wc -l) python files"
    ;;
  s9)  # background: see the header
    env_runs
    ship=$SRC/adapters/$KEY
    for cell in ${PHASE_CELLS:-bf16-count bf16-file 4bit-count 4bit-file}; do
      variant=${cell%%-*} rule=${cell#*-}
      {
        extra=(); [ "$variant-$rule" = bf16-file ] && extra=(--profile "$RES/profile-bf16-likelihood")
        (cd "$SRC" && python3 -m bench.request_phases --model "$KEY" --cache-dir /tmp/cache --adapters-dir "$ship" \
          --data "$DATA" --variant "$variant" --rule "$rule" --requests 16 --out "$RES/phases-$variant-$rule" \
          "${extra[@]}" >"$RES/phases-$variant-$rule.log" 2>&1; echo "exit $?" >>"$RES/phases-$variant-$rule.log")
        echo "phases-$variant-$rule $(tail -1 "$RES/phases-$variant-$rule.log") $(date +%T)"
      }
    done
    (eval_run holdout-bf16 --split train --ids /tmp/data/holdout_ids.json --adapters-dir "$ship" --quantization none) &
    (eval_run eval-bf16 --split eval --adapters-dir "$ship" --quantization none) &
    wait
    echo "all done $(date +%T)"
    ;;
  s11)  # background: see the header
    env_runs
    t0=$(date +%s)
    variants="peft:loop,unsloth:loop,unsloth:sft:padded,unsloth:sft:padding_free,unsloth:sft:packed"
    variants+=",unsloth:sft:padding_free@batch_size=16;grad_accum=1"
    variants+=",unsloth:sft:padding_free@batch_size=16;grad_accum=1;gradient_checkpointing=false"
    (cd "$SRC" && python3 -m bench.train_backends --config "$RECIPE" --member q15-zs-s1 --steps 12 \
      --warmup-steps 3 --timeout 200 --variants "${S11_VARIANTS:-$variants}" --set train.data="$DATA" \
      --set train.cache_dir=/tmp/cache --out "$RES/backends" >"$RES/backends.log" 2>&1)
    echo "backends done in $(( $(date +%s) - t0 )) s"
    t0=$(date +%s) ship=()
    for m in q15-zs-s1 q15-pr-s2 q15-zs-nef-s3; do
      train_one "$m" /tmp/out/ship --set train.trainer=sft & ship+=($!); sleep 2
    done
    # the loop's twin (its validation curve beside the SFTTrainer's, same seed and data); S11_TWIN=0 leaves it
    # out (the card then trains only the recipe, and session 7's loop curve of the same member is the reference)
    [ "${S11_TWIN:-1}" = 1 ] && train_one "q15-zs-s1@loop" /tmp/out/loop --set train.trainer=loop &
    wait "${ship[@]}"
    echo "members written in $(( $(date +%s) - t0 )) s: $(ls /tmp/out/ship | tr '\n' ' ')"
    cp "$SRC/adapters/$KEY/vote.json" /tmp/out/ship/  # the shipped vote (fitted on the old members' candidates)
    eval_run eval-ens --split eval --adapters-dir /tmp/out/ship
    echo "recipe with its evaluation in $(( $(date +%s) - t0 )) s"
    wait
    echo "all done $(date +%T)"
    ;;
  latency)  # background: see the header
    env_runs
    mkdir -p /tmp/adapters-count && cp -r "$SRC/adapters/$KEY"/* /tmp/adapters-count/
    python3 -c "import json; f='/tmp/adapters-count/vote.json'; d=json.load(open(f)); d['vote']['rule']='count'; d['vote'].pop('calibration'); json.dump(d, open(f, 'w'))"
    for cell in ${LATENCY_CELLS:-bf16-likelihood bf16-count 4bit-likelihood 4bit-count}; do
      variant=${cell%%-*} rule=${cell#*-}
      dir=$SRC/adapters/$KEY; [ "$rule" = count ] && dir=/tmp/adapters-count
      q=none; [ "$variant" = 4bit ] && q=4bit
      (cd "$SRC" && python3 -m bench.http_latency --model "$KEY" --cache-dir /tmp/cache --adapters-dir "$dir" \
        --quantization "$q" --kinds ensemble --concurrency 1,8 --requests 48 --out "$RES/latency-$cell" \
        >"$RES/latency-$cell.log" 2>&1)
      echo "latency-$cell exit $? $(date +%T)"
    done
    echo "all done $(date +%T)"
    ;;
  results)
    for r in "$RES"/holdout-bf16 "$RES"/eval-bf16; do
      [ -f "$r/candidates.jsonl" ] && xz -T0 -c "$r/candidates.jsonl" >"$OUT/$(basename "$r")-candidates.jsonl.xz"
    done
    tar -C "$RES" -cJf "$OUT/results.tar.xz" --exclude=candidates.jsonl --exclude='trace.json.gz' . 2>/dev/null
    [ -f "$RES/profile-bf16-likelihood/trace.json.gz" ] && cp "$RES/profile-bf16-likelihood/trace.json.gz" "$OUT/"
    ls -la "$OUT"
    ;;
  train)  # background: see the header
    env_runs
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
    ship=()
    for m in q15-zs-s1 q15-pr-s2 q15-zs-nef-s3; do train_one "$m" /tmp/out/ship & ship+=($!); sleep 2; done
    train_one "q15-zs-s1@peft" /tmp/out/peft --set train.backend=peft &
    train_one "q15-zs-s1@r8" /tmp/out/r8 --set members.q15-zs-s1.r=8 --set members.q15-zs-s1.alpha=16 &
    (cd "$SRC" && QA_GPU_TRAIN_BASE=/tmp/cache/models/$KEY UNSLOTH_COMPILE_LOCATION=/tmp/run/test-ucache \
      python3 -m pytest -q -p no:cacheprovider tests/training/test_unsloth_seq_len.py >"$RES/gpu-test.log" 2>&1)
    echo "gpu test: $(tail -1 "$RES/gpu-test.log")"
    wait "${ship[@]}"
    echo "members written $(date +%T): $(ls /tmp/out/ship | tr '\n' ' ')"
    # two eval chains side by side (each process may keep up to a fifth of the card in decode shapes)
    (eval_run eval-ens --split eval --adapters-dir /tmp/out/ship
     eval_run holdout --split train --ids /tmp/out/ship/.training/holdout_ids.json --adapters-dir /tmp/out/ship) &
    (eval_run eval-zs --split eval --prompts zero-shot --num-beams 1
     eval_run eval-cpu --split eval --adapters-dir /tmp/out/ship --num-beams 1 --quantization none --dtype float32
     until grep -q "^exit" "$RES/train-q15-zs-s1@r8.log" 2>/dev/null; do sleep 5; done
     eval_run eval-r8 --split eval --adapters-dir /tmp/out/r8 --prompts zero-shot --num-beams 1) &
    wait
    echo "all done $(date +%T)"
    ;;
  evidence)  # background: see the header
    env_runs
    ship=$SRC/adapters/$KEY
    for rule in count likelihood; do  # the shipped members under each rule's defaults (nothing fitted yet)
      mkdir -p "/tmp/adapters-$rule" && cp -r "$ship"/* "/tmp/adapters-$rule"/
      echo "{\"schema\": \"qa-ensemble.vote/1\", \"vote\": {\"rule\": \"$rule\"}, \"provenance\": {}}" \
        >"/tmp/adapters-$rule/vote.json"
    done
    lik=/tmp/adapters-likelihood
    if [ "${EVIDENCE_BACKENDS:-1}" = 1 ]; then
      echo "backends $(date +%T)"
      bash bench/gpu_quality.sh backends >"$RES/backends.log" 2>&1
    fi
    echo "evals $(date +%T)"
    (eval_run holdout-lik --split train --ids /tmp/data/holdout_ids.json --adapters-dir "$lik"
     eval_run eval-lik --split eval --adapters-dir "$lik") &
    eval_run eval-cpu --split eval --adapters-dir "$ship" --members 1 --prompts zero-shot --num-beams 1 \
      --quantization none --dtype float32 &
    wait
    echo "latency $(date +%T)"
    for rule in count likelihood; do
      python3 -m bench.http_latency --model "$KEY" --cache-dir /tmp/cache --adapters-dir "/tmp/adapters-$rule" \
        --kinds ensemble --concurrency 1,8 --requests 64 --out "$RES/latency-$rule" >"$RES/latency-$rule.log" 2>&1
      echo "latency-$rule exit $?"
    done
    echo "all done $(date +%T)"
    ;;
  status)
    tail -3 "$RES/${2:-train}.log"
    for r in "$RES"/backends/*/report.md; do [ -f "$r" ] && cat "$r"; done
    for f in /tmp/out/*/.training/*.train_log.jsonl; do
      [ -f "$f" ] || continue
      echo "$f: $(grep -o '"f1": [0-9.]*' "$f" | tr '\n' ' ' | cut -c1-300)"
      tail -1 "$f" | cut -c1-200
    done
    for f in "$RES"/train-*.log "$RES"/eval-*.log "$RES"/holdout*.log "$RES"/latency-*.log "$RES"/phases-*.log; do
      [ -f "$f" ] && echo "$f: $(grep -E 'Error|error|exit' "$f" | tail -2 | cut -c1-300)"
    done
    for r in "$RES"/phases-*/; do [ -f "$r/request_phases.md" ] && { echo "== $r"; cat "$r/request_phases.md"; }; done
    for r in "$RES"/eval-* "$RES"/holdout*; do
      [ -f "$r/report.md" ] && { echo "== $r"; grep -E "^\| (ensemble|member|greedy|top-beam|prompt)" "$r/report.md" | head -20; }
    done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    ;;
  backends)  # on an idle card: the same member and steps with each backend, one after the other
    env_runs
    (cd "$SRC" && python3 -m bench.train_backends --config "$RECIPE" --member q15-zs-s1 --steps 20 \
      --variants peft:loop,unsloth:loop --warmup-steps 4 --timeout 200 --set train.data="$DATA" --set train.cache_dir=/tmp/cache \
      --out "$RES/backends" 2>&1 | grep -E "^\||error")
    ;;
  collect)
    for m in q15-zs-s1 q15-pr-s2 q15-zs-nef-s3; do
      [ -d "/tmp/out/ship/$m" ] && tar -C /tmp/out/ship -cf "$OUT/$m.tar" "$m"
    done
    [ -d /tmp/out/loop/q15-zs-s1 ] && tar -C /tmp/out/loop -cf "$OUT/loop-q15-zs-s1.tar" q15-zs-s1
    tar -C /tmp -cJf "$OUT/results.tar.xz" results $(cd /tmp && ls -d out/*/.training 2>/dev/null) \
      --exclude='*.safetensors' 2>/dev/null
    ls -la "$OUT"
    ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
