"""Model-side serving code: the one place that imports torch, transformers, peft and bitsandbytes.

`sources` fetches and caches base models (`folders` stamps and publishes them atomically; `cli` is
`qa-model`), `tiny` builds a tiny random model for tests, `loading` loads a base once, `registry` validates
LoRA adapter folders, and `generator` runs one mixed-adapter batch per call; `errors` holds the typed errors.
This package knows nothing about prompts' wording, voting or HTTP (those live in `ensemble/` and `app/`), and
importing it does no work: import the submodules you need.
"""
