"""LoRA adapters from folder to forward pass: `registry` validates adapter folders and their manifests
(`config` reads their LoRA configs), `weights` reads and checks their tensors, `residency` decides which are
resident (least recently used out, pinned ones kept), `served` swaps them onto the model under one of two
backends: peft's own mixed batch, or `multi_lora`'s stacked adapters (one batched LoRA per projection, its
kernel in `models.kernels`), over the base projections `fused_base` concatenates. Nothing here decodes."""
