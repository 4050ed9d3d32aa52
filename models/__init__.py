"""Model-side serving code: the one place that imports torch, transformers, peft and bitsandbytes.

Four rooms, each importing only those below it (an import-linter contract in pyproject.toml):

- `models.decode`: what answers a request: `generator.Generator` (one mixed-adapter batch per call, and
  teacher-forced scores of given answers), the project's decode loop (`loop`, `state`, `search`,
  `fast_paths`), transformers' `generate` helpers (`hf_generate`), where an answer ends (`line_ends`), the
  packed teacher forcing (`teacher_forcing`) and the option checks (`checks`).
- `models.adapters`: LoRA adapters: validated folders (`registry`, `config`), their weights (`weights`), which
  are resident (`residency`), the served set swapped onto the model (`served`), the stacked multi-LoRA
  backend (`multi_lora`) and the fused sibling projections of the base (`fused_base`).
- `models.kernels`: the Triton custom ops with their `fits()` guards (`lora_kernel`, `attention_kernel`);
  they import nothing of the project.
- `models.base`: where a base model comes from and how it loads: `sources` (fetch, convert, cache),
  `folders` (stamped, atomically published folders), `tiny` (a tiny random model for tests), `loading`
  (4-bit or bf16, once), `cli` (`qa-model`).

`models.errors` holds the typed errors every room raises. This package knows nothing about prompts' wording,
voting or HTTP (those live in `ensemble/` and `app/`), and importing it does no work: import the modules you
need.
"""
