"""Stacked multi-LoRA for serving: every resident adapter in one pair of matrices per layer, chosen per row.

peft's mixed-adapter batch (`adapter_names=`) loops in Python over the adapters of a batch in every LoRA layer
(index, matmul, matmul, scale, index-add per adapter): with 7 targets x 24 layers x 3 adapters that is
thousands of small kernels per decoded token, and it cannot be captured in a CUDA graph. Here each target
linear layer holds the LoRA matrices of all resident adapters stacked, A as [sum r, in] and B (scaling folded
in) as [out, sum r], and a per-row mask over the stacked rank says which adapter's slice a row uses:

    y = base(x) + ((x @ A^T) * mask[row]) @ B^T

Two matmuls and a multiply per layer whatever the number of adapters (they add rank, not kernels), static
shapes, no data-dependent Python: a base row has an all-zero mask. A small model's decode step costs about
one kernel launch per operator (`bench/step_ops.py`), so the operators are few: the add is folded into the B
matmul (`addmm`), and projections that read the same input (q/k/v of an attention, gate/up of an MLP) are
computed together (`SiblingGroup`): one base matmul over their concatenated weights
(`models.adapters.fused_base`), one A matmul, one mask multiply and a B matmul per member adding into its
columns of the output. In a decode step on CUDA (one token a row, few rows) a group's whole LoRA is one Triton
kernel (two for the long input of the MLP's down projection: `models.kernels.lora_kernel`). The seven
projections of a layer are 4 base matmuls and 5 LoRA kernels there, 19 operators elsewhere, instead of 35.

The mask is set once per `generate` call for its rows (beams repeat their row's mask) and read by every layer
through one shared `RowMask` holder. It lives in one persistent buffer per row count, and `version` changes
whenever the stacks are rebuilt, so a CUDA graph that captured a forward (`models.decode.loop`) knows which
tensor addresses it may still replay.

`StackedLora` loads adapters saved by peft (`adapter_model.safetensors` + `adapter_config.json`, plain
LoRA, as `models.adapters.config` validates it for both backends), wraps the target
layers of the base model in place on first use and rebuilds the stacks when adapters come or go. It is for
inference only (no dropout, no gradients); training uses peft. Checking the weights before they are used is
`models.adapters.weights`' job; choosing adapters per row is the generator's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.adapters.config import LoraConfig
from models.adapters.fused_base import FusedLinear, fuse
from models.errors import AdapterError
from models.kernels import lora_kernel

_PEFT_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class LoraWeights:
    """One adapter, read from disk: per target module path, (A [r, in], B [out, r]) and its scaling."""

    name: str
    rank: int
    scaling: float
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_lora(folder: Path, name: str, config: LoraConfig) -> LoraWeights:
    """Read a peft LoRA folder's weights (safetensors only) for its validated `config`
    (`models.adapters.config`); raises `AdapterError` for a matrix without its pair or a rank other than the
    config's (which `models.adapters.weights` has refused already, for a folder that went through it)."""
    from safetensors.torch import load_file

    rank, scaling = config.rank, config.scaling
    tensors = load_file(str(folder / "adapter_model.safetensors"), device="cpu")
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in tensors.items():
        if not key.endswith(_A):
            continue
        path = key.removeprefix(_PEFT_PREFIX).removesuffix(_A)
        b = tensors.get(key.removesuffix(_A) + _B)
        if b is None:
            raise AdapterError(f"adapter {name!r}: {path} has lora_A but no lora_B")
        if a.shape[0] != rank or b.shape[-1] != rank:
            raise AdapterError(f"adapter {name!r}: {path} has rank {a.shape[0]}, the config says r {rank}")
        modules[path] = (a, b)
    if not modules:
        raise AdapterError(f"adapter {name!r}: no LoRA weights found")
    return LoraWeights(name, rank, scaling, modules)


class RowMask:
    """The per-row mask over the stacked rank, shared by every wrapped layer of one model, and whether a
    decode step's LoRA may run as one kernel a group (`models.kernels.lora_kernel`)."""

    def __init__(self, kernel: bool = True) -> None:
        self.mask: torch.Tensor | None = None
        self.kernel = kernel


SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Projections of one parent module that read the same input tensor: one base matmul
(`models.adapters.fused_base`), one A matmul and one mask multiply for all of them."""


class SiblingGroup:
    """Sibling projections that read one input, computed together: the first member called with an input
    computes every member's output ([..., sum out]: the fused base, plus masked `x @ A^T` times B), and the
    members called with that same tensor object take their columns (views). Any other input is computed
    afresh, so the result never depends on call order; the reference is dropped once every member has its
    output. A group of one member is that layer alone.
    """

    def __init__(self, rows: RowMask) -> None:
        self.rows = rows
        self.members: list[StackedLoraLinear] = []
        self.fused: FusedLinear | None = None  # the members' base weights side by side (`fuse_base`)
        self.lora_a: torch.Tensor | None = None  # [members x sum r, in]; each member's A is a view into it
        self.lora_b: torch.Tensor | None = None  # [sum out, sum r]; each member's B is a view (its rows)
        self.spans: list[tuple[int, int]] = []  # each member's columns of the group's output
        self._fused_for: tuple[int, ...] = ()
        self._x: torch.Tensor | None = None
        self._outputs: list[torch.Tensor] = []
        self._left = 0

    def fuse_base(self) -> None:
        """Concatenate the members' base weights (once per membership; none when they cannot be)."""
        key = tuple(id(m.base_layer) for m in self.members)
        if key != self._fused_for:
            self.fused = fuse([m.base_layer for m in self.members])
            self._fused_for = key
            self.spans, start = [], 0
            for member in self.members:
                self.spans.append((start, start + member.out_features))
                start += member.out_features

    def output(self, x: torch.Tensor, member: StackedLoraLinear) -> torch.Tensor:
        if self._x is not x or not self._outputs:
            self._outputs, self._x, self._left = self._compute(x), x, len(self.members)
        out = self._outputs[self.members.index(member)]
        self._left -= 1
        if self._left <= 0:
            self.forget()
        return out

    def forget(self) -> None:
        """Drop the kept input and outputs (every member served, or the stacks rebuilt)."""
        self._x, self._outputs = None, []

    def _compute(self, x: torch.Tensor) -> list[torch.Tensor]:
        mask = self.rows.mask if self.lora_a is not None else None
        if self.fused is None and len(self.members) > 1:  # siblings that could not be fused
            outs = [m.base_layer(x) for m in self.members]
            if mask is not None:
                h = self._masked_a(x, mask)
                for i, out in enumerate(outs):
                    self._add_b(out.view(-1, out.shape[-1]), h, i)
            return outs
        out = (self.fused or self.members[0].base_layer)(x)
        if mask is not None:
            self._add_lora(x, out.view(-1, out.shape[-1]), mask)
        if len(self.members) == 1:
            return [out]
        return [out[..., start:end] for start, end in self.spans]

    def _add_lora(self, x: torch.Tensor, flat: torch.Tensor, mask: torch.Tensor) -> None:
        """Every member's LoRA added into the group's output `flat` [tokens, sum out], in place."""
        flat_x = x.view(-1, x.shape[-1]) if x.is_contiguous() else x.reshape(-1, x.shape[-1])
        starts = [start for start, _ in self.spans]
        if self.rows.kernel and lora_kernel.fits(flat_x, self.lora_a, mask, self.lora_b, flat, starts):
            lora_kernel.add_lora_(flat_x, self.lora_a, mask, self.lora_b, flat, starts)
            return
        h = self._masked_a(x, mask)
        for i, (start, end) in enumerate(self.spans):
            self._add_b(flat[:, start:end], h, i)

    def _add_b(self, cols: torch.Tensor, h: torch.Tensor, member: int) -> None:
        """`cols += h_member @ B_member^T`: `cols` [tokens, out] the member's output (or its columns of the
        group's), `h` every member's masked `x @ A^T`."""
        rank = self.rows.mask.shape[1]
        b = self.members[member].lora_b.t().to(cols.dtype)
        cols.addmm_(h[:, member * rank : (member + 1) * rank].to(cols.dtype), b)

    def _masked_a(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.linear(x.to(self.lora_a.dtype), self.lora_a)  # [..., members x sum r]
        h = h.view(*h.shape[:-1], len(self.members), mask.shape[1])
        h = h * mask.view(mask.shape[0], *([1] * (h.dim() - 3)), 1, mask.shape[1])
        return h.view(-1, h.shape[-2] * h.shape[-1])


class StackedLoraLinear(nn.Module):
    """A base linear layer (plain or 4-bit) plus the stacked LoRA of every resident adapter."""

    def __init__(self, base_layer: nn.Module, rows: RowMask, path: str = "") -> None:
        super().__init__()
        self.base_layer = base_layer
        self.rows = rows
        self.path = path
        self.group = SiblingGroup(rows)  # replaced by the siblings' group when it has any (`StackedLora`)
        self.group.members.append(self)
        self.lora_a: torch.Tensor | None = None  # [sum r, in], a view into `group.lora_a`
        self.lora_b: torch.Tensor | None = None  # [out, sum r], scaling folded in

    @property
    def in_features(self) -> int:
        return int(self.base_layer.in_features)

    @property
    def out_features(self) -> int:
        return int(self.base_layer.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(x, self)


class StackedLora:
    """Resident adapters of one base model, stacked per layer; not thread-safe (the generator locks)."""

    def __init__(self, model: nn.Module, *, dtype: torch.dtype | None = None, kernel: bool = True) -> None:
        self.model = model
        self.rows = RowMask(kernel)
        self._adapters: dict[str, LoraWeights] = {}
        self._layers: dict[str, StackedLoraLinear] = {}
        self._offsets: dict[str, tuple[int, int]] = {}  # name -> (start, end) in the stacked rank
        self._dtype = dtype
        self._row_buffers: dict[int, torch.Tensor] = {}  # row count -> the mask's fixed storage
        self.version = 0
        """Changes whenever the stacked matrices (and the mask buffers) are replaced."""

    @property
    def names(self) -> list[str]:
        return list(self._adapters)

    def add(self, weights: LoraWeights) -> None:
        for path in weights.modules:
            self._wrap(path)
        self._adapters[weights.name] = weights
        self._rebuild()

    def remove(self, name: str) -> None:
        del self._adapters[name]
        self._rebuild()

    def set_rows(self, adapters: Sequence[str | None], repeat: int = 1) -> None:
        """Choose each row's adapter (None = the base) for the next forward passes; beams repeat rows."""
        total = self._total_rank()
        if total == 0 or all(name is None for name in adapters):
            self.rows.mask = None  # a base-only batch skips the LoRA matmuls altogether
            return
        stacked = next(iter(self._layers.values())).lora_a  # every wrapped layer stacks the same ranks
        # Filled on the CPU and copied once: a slice assignment per row on the accelerator is a kernel each.
        mask = torch.zeros(len(adapters), total, dtype=stacked.dtype)
        for row, name in enumerate(adapters):
            if name is not None:
                start, end = self._offsets[name]
                mask[row, start:end] = 1
        if repeat > 1:
            mask = mask.repeat_interleave(repeat, dim=0)
        self.rows.mask = self._row_buffer(mask.shape[0], stacked).copy_(mask)

    def clear_rows(self) -> None:
        self.rows.mask = None

    def _row_buffer(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """The mask's storage for `rows` rows: the same tensor every time, until the stacks change."""
        buffer = self._row_buffers.get(rows)
        if buffer is not None and buffer.is_inference() and not torch.is_inference_mode_enabled():
            buffer, self.version = None, self.version + 1  # not writable here: a new address, say so
        if buffer is None:
            buffer = self._row_buffers[rows] = like.new_empty(rows, like.shape[0])
        return buffer

    def _total_rank(self) -> int:
        return sum(w.rank for w in self._adapters.values())

    def _stack_dtype(self) -> torch.dtype:
        if self._dtype is not None:
            return self._dtype
        for param in self.model.parameters():
            if param.is_floating_point() and param.dtype != torch.uint8:
                return param.dtype
        return torch.float32

    def _wrap(self, path: str) -> None:
        if path in self._layers:
            return
        try:
            layer = self.model.get_submodule(path)
        except AttributeError:
            raise AdapterError(f"LoRA target {path} is not a module of the base model") from None
        if not hasattr(layer, "in_features"):
            raise AdapterError(f"LoRA target {path} is not a linear layer")
        parent_path, _, child = path.rpartition(".")
        wrapped = StackedLoraLinear(layer, self.rows, path)
        setattr(self.model.get_submodule(parent_path) if parent_path else self.model, child, wrapped)
        self._layers[path] = wrapped
        for group in SIBLINGS:
            if child not in group:
                continue
            siblings = [f"{parent_path}.{name}" if parent_path else name for name in group if name != child]
            wrapped_sibling = next((self._layers[p] for p in siblings if p in self._layers), None)
            if wrapped_sibling is not None:  # join the siblings' group (same input by construction)
                wrapped.group = wrapped_sibling.group
                wrapped.group.members.append(wrapped)

    def _rebuild(self) -> None:
        """Stack every resident adapter's A and scaled B per layer, in resident order (zeros where absent)."""
        self._offsets, start = {}, 0
        self._row_buffers.clear()
        self.version += 1
        for name, weights in self._adapters.items():
            self._offsets[name] = (start, start + weights.rank)
            start += weights.rank
        dtype = self._stack_dtype()
        groups = {id(layer.group): layer.group for layer in self._layers.values()}
        for group in groups.values():
            group.forget()
            group.fuse_base()
            if not self._adapters:
                group.lora_a = group.lora_b = None
                for layer in group.members:
                    layer.lora_a = layer.lora_b = None
                continue
            self._stack_group(group, dtype)

    def _stack_group(self, group: SiblingGroup, dtype: torch.dtype) -> None:
        device = _device_of(group.members[0].base_layer)
        a_stacks, b_stacks = [], []
        for layer in group.members:
            a_parts, b_parts = [], []
            for weights in self._adapters.values():
                pair = weights.modules.get(layer.path)
                if pair is None:
                    a_parts.append(torch.zeros(weights.rank, layer.in_features))
                    b_parts.append(torch.zeros(layer.out_features, weights.rank))
                else:
                    a_parts.append(pair[0].float())
                    b_parts.append(pair[1].float() * weights.scaling)
            a_stacks.append(torch.cat(a_parts, dim=0))
            b_stacks.append(torch.cat(b_parts, dim=1))
        total = self._total_rank()
        group.lora_a = torch.cat(a_stacks, dim=0).to(device=device, dtype=dtype)
        group.lora_b = torch.cat(b_stacks, dim=0).to(device=device, dtype=dtype)
        for i, (layer, (start, end)) in enumerate(zip(group.members, group.spans, strict=True)):
            layer.lora_a = group.lora_a[i * total : (i + 1) * total]  # views: no second copy
            layer.lora_b = group.lora_b[start:end]


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
