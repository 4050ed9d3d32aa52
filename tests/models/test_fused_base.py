"""Sibling projections' base weights as one matmul: same outputs, no second copy, refused where not exact."""

import copy

import pytest
import torch
from torch import nn

from models.adapters.fused_base import fuse

IN = 64
OUTS = (64, 32, 32)  # q, k, v of a grouped-query attention: k and v smaller


def _plain(bias: bool = True) -> list[nn.Linear]:
    torch.manual_seed(0)
    return [nn.Linear(IN, out, bias=bias) for out in OUTS]


@pytest.mark.parametrize("bias", [True, False])
def test_plain_fused_outputs_equal_each_layer_and_share_its_memory(bias) -> None:
    layers = _plain(bias)
    before = copy.deepcopy(layers)
    fused = fuse(layers)
    assert fused is not None and fused.spans == [(0, 64), (64, 96), (96, 128)]
    x = torch.randn(3, 5, IN)
    out = fused(x)
    assert out.shape == (3, 5, sum(OUTS))
    for (start, end), layer, original in zip(fused.spans, layers, before, strict=True):
        torch.testing.assert_close(out[..., start:end], original(x))
        torch.testing.assert_close(layer(x), original(x))  # each member still works on its own
    storage = layers[0].weight.untyped_storage().data_ptr()
    assert all(layer.weight.untyped_storage().data_ptr() == storage for layer in layers)  # views, one copy


def test_layers_that_disagree_are_not_fused() -> None:
    assert fuse(_plain()[:1]) is None  # nothing to fuse
    mixed_bias = _plain()
    mixed_bias[1] = nn.Linear(IN, 32, bias=False)
    assert fuse(mixed_bias) is None
    other_input = _plain()
    other_input[2] = nn.Linear(IN * 2, 32)
    assert fuse(other_input) is None
    other_dtype = _plain()
    other_dtype[0] = other_dtype[0].to(torch.float64)
    assert fuse(other_dtype) is None
    assert fuse([nn.Linear(IN, 8), nn.Identity()]) is None


def _4bit(outs=OUTS, in_features=IN, nested=True) -> list[nn.Module]:
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    layers = []
    for out in outs:
        layer = bnb.nn.Linear4bit(
            in_features,
            out,
            bias=True,
            compute_dtype=torch.float32,
            quant_type="nf4",
            compress_statistics=nested,
            device="cpu",
        )
        layer.weight = bnb.nn.Params4bit(
            torch.randn(out, in_features) * 0.1,
            requires_grad=False,
            quant_type="nf4",
            compress_statistics=nested,
            blocksize=64,
        )
        layer.bias.data = torch.randn(out) * 0.1
        layers.append(layer.to("cpu"))  # quantises
    return layers


@pytest.mark.parametrize("nested", [True, False])
def test_4bit_fused_outputs_equal_each_layer(nested) -> None:
    layers = _4bit(nested=nested)
    assert layers[0].weight.quant_state.nested is nested
    before = copy.deepcopy(layers)
    fused = fuse(layers)
    assert fused is not None
    x = torch.randn(2, 3, IN)
    out = fused(x)
    for (start, end), original in zip(fused.spans, before, strict=True):
        torch.testing.assert_close(out[..., start:end], original(x), rtol=1e-5, atol=1e-5)
    one_row = torch.randn(1, 1, IN)  # bitsandbytes' single-row (gemv) path
    for (start, end), original in zip(fused.spans, before, strict=True):
        torch.testing.assert_close(fused(one_row)[..., start:end], original(one_row), rtol=1e-5, atol=1e-5)
    storage = layers[0].weight.untyped_storage().data_ptr()
    assert all(layer.weight.untyped_storage().data_ptr() == storage for layer in layers)


def test_4bit_blocks_that_would_straddle_two_members_are_not_fused() -> None:
    assert fuse(_4bit(outs=(3, 5), in_features=48)) is None  # 144 and 240 weights: not whole 64-blocks


def test_4bit_layers_repacked_for_the_cpu_kernel_are_not_fused() -> None:
    layers = _4bit()
    layers[0].weight.quant_state.packing_format_for_cpu = True  # what bitsandbytes' CPU forward leaves
    assert fuse(layers) is None
