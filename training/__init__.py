"""Offline QLoRA training of ensemble members: one command trains several LoRA adapters over one base model.

`config` (the recipe: `TrainConfig` + `MemberConfig`s, TOML/YAML, `--set` overrides), `data` (examples,
article holdout, tokenization with answer-only labels and the length policy), `lengths` (token-length table
and histogram), `backends` (loading the base for training: peft, or unsloth on CUDA), `trainer` (the training
loop), `stability` (attention kernels in training, reports of non-finite steps), `validation` (EM/F1 of
generated answers through the serving pipeline), `export` (adapter folder + manifest), `runner` (one run, all
members) and `cli` (`qa-train`).

Nothing outside this package imports it, and unsloth is imported only here, inside a function, because it
patches transformers and peft when imported. Importing `training` or its submodules does no work.
"""
