"""Triton custom ops, each with the `fits()` guard its caller checks first: `lora_kernel` (a decode step's
stacked LoRA, one kernel a projection group) and `attention_kernel` (a decode step's rotary, cache write and
attention). They import nothing of the project, so any room may use them."""
