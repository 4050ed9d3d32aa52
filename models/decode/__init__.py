"""What answers a request: `generator.Generator` turns prompts and adapter names into candidate answers (one
mixed-adapter batch per call, through transformers' `generate` with the helpers of `hf_generate`, or the
project's own decode loop) and scores given answers by teacher forcing (`teacher_forcing`). The loop is
`loop.DecodeLoop` over the fixed buffers of `state` (CUDA graphs on a GPU), `search` (greedy and beam
steps), `fast_paths` (the attention and norm modules swapped for the kernels' versions); `line_ends` says
where an answer ends, `checks` refuses impossible options."""
