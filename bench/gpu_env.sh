# Source on the lent GPU machine (see docs/benchmarks.md): assemble the GGUF carried in parts
# (../shared/tools/gpu-split), unpack the carried packages (../shared/tools/gpu-site), convert the base once.
# Everything lands in /tmp, which lasts while the machine is held.
set -euo pipefail
QA_GGUF_SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
export QA_CACHE_DIR=/tmp/cache HF_HUB_OFFLINE=1 HF_HUB_ENABLE_HF_TRANSFER=0 PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$PWD
if [ ! -f /tmp/site/.unpacked ]; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .gpu-site/site.tar.xz && touch /tmp/site/.unpacked
fi
if [ ! -f "$QA_CACHE_DIR/models/qwen2.5-coder-0.5b/qa_base.json" ]; then
  cat /tmp/parts/* > /tmp/base.gguf
  echo "$QA_GGUF_SHA256  /tmp/base.gguf" | sha256sum -c
  python3 -m models.base.cli fetch qwen2.5-coder-0.5b --gguf /tmp/base.gguf --cache-dir "$QA_CACHE_DIR"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
set +e
