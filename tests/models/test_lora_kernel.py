"""The one-kernel stacked LoRA (`models/kernels/lora_kernel.py`): its arithmetic, run by Triton's interpreter
on the CPU (in a subprocess: the interpreter is chosen when the kernel is defined), and when it serves a
call."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from models.kernels import lora_kernel

CHECK = textwrap.dedent(
    """
    import torch
    from models.kernels import lora_kernel

    torch.manual_seed(0)
    cases = [(1, (128, 64, 64), 24, 200), (5, (192, 64), 48, 64), (3, (64,), 16, 130)]
    cases.append((2, (64, 32, 32), 8, 64))  # 32-column tiles (the tiny model's k and v)
    cases.append((3, (64,), 16, 2500))  # a long input (the down projection's): split over it, two kernels
    cases.append((2, (64, 128), 8, lora_kernel.MAX_IN_FEATURES + 1))  # and two members
    for rows, outs, rank, in_features in cases:
        starts = [sum(outs[:i]) for i in range(len(outs))]
        x = torch.randn(rows, in_features)
        a = torch.randn(len(outs) * rank, in_features) * 0.1
        mask = (torch.rand(rows, rank) > 0.5).float()
        b = torch.randn(sum(outs), rank) * 0.1
        out = torch.randn(rows, sum(outs))
        want = out.clone()
        for i, (start, size) in enumerate(zip(starts, outs)):
            h = (x @ a[i * rank : (i + 1) * rank].T) * mask
            want[:, start : start + size] += h @ b[start : start + size].T
        lora_kernel.launch(x, a, mask, b, out, starts)
        err = (out - want).abs().max().item()
        assert err < 1e-4, (rows, outs, rank, in_features, err)
    print("ok")
    """
)


def test_the_kernel_adds_each_members_masked_lora_into_its_columns() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def _call(rows=1, outs=(128, 64), rank=16, in_features=64, device="cpu", dtype=torch.float32):
    x = torch.zeros(rows, in_features, device=device, dtype=dtype)
    a = torch.zeros(len(outs) * rank, in_features, device=device, dtype=dtype)
    mask = torch.zeros(rows, rank, device=device, dtype=dtype)
    b = torch.zeros(sum(outs), rank, device=device, dtype=dtype)
    out = torch.zeros(rows, sum(outs), device=device, dtype=dtype)
    return x, a, mask, b, out, [sum(outs[:i]) for i in range(len(outs))]


def test_it_serves_only_a_decode_step_on_cuda() -> None:
    assert not lora_kernel.fits(*_call())  # CPU tensors: the matmuls serve
    if not torch.cuda.is_available() or lora_kernel.triton is None:
        pytest.skip("the CUDA cases need a CUDA device and Triton")
    assert lora_kernel.fits(*_call(device="cuda"))
    assert not lora_kernel.fits(*_call(rows=lora_kernel.MAX_ROWS + 1, device="cuda"))  # a prefill's tokens
    assert not lora_kernel.fits(*_call(outs=(80, 64), device="cuda"))  # no tile (64, 32) fits 80 columns
    assert not lora_kernel.fits(*_call(outs=(64,) * 4, device="cuda"))  # more members than it picks from
    assert lora_kernel.fits(*_call(in_features=4864, device="cuda"))  # the down projection: two kernels
