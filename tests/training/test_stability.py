"""Training-step safety: cuDNN SDPA stays off while training on CUDA (and comes back after), and a non-finite
micro-batch is reported with the parameter its NaN reached first."""

import pytest
import torch

from training.stability import attention_kernels, find_nonfinite, grads_finite


@pytest.fixture
def cudnn_flag():
    """PyTorch's global cuDNN-SDPA switch, put back as it was whatever a test does to it."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    yield before
    torch.backends.cuda.enable_cudnn_sdp(before)


def test_cudnn_sdpa_is_off_while_training_on_cuda_and_restored_after(cudnn_flag):
    torch.backends.cuda.enable_cudnn_sdp(True)
    with attention_kernels(cudnn=False, device="cuda") as backends:
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert backends is not None and backends["cudnn"] is False
        assert {"flash", "efficient", "math"} <= set(backends)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with pytest.raises(RuntimeError), attention_kernels(cudnn=False, device="cuda"):
        raise RuntimeError("a failing step")
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored on an exception too
    with attention_kernels(cudnn=True, device="cuda") as backends:
        assert backends["cudnn"] is True


def test_on_the_cpu_the_switch_is_left_alone(cudnn_flag):
    with attention_kernels(cudnn=not cudnn_flag, device="cpu") as backends:
        assert backends is None and torch.backends.cuda.cudnn_sdp_enabled() == cudnn_flag


def _params(*grads):
    named = []
    for i, grad in enumerate(grads):
        param = torch.nn.Parameter(torch.zeros(2))
        param.grad = None if grad is None else torch.tensor(grad)
        named.append((f"layers.{i}.q_proj.lora_B.weight", param))
    return named


def test_finite_gradients_give_no_report():
    named = _params([1.0, 2.0], None, [3.0, -4.0])
    assert grads_finite([p for _, p in named]) and grads_finite([])
    found = find_nonfinite(
        named, step=1, micro_batch=0, micro_batches=1, forward_finite=True, shape=(2, 8), backends=None
    )
    assert found is None


def test_the_report_names_the_gradient_backward_reached_first():
    nan, inf = float("nan"), float("inf")
    # Backward runs the layers in reverse: a NaN entering at layer 2 spreads to layers 1 and 0, not 3.
    named = _params([nan, 1.0], [inf, 0.0], [0.0, nan], [1.0, 1.0])
    assert not grads_finite([p for _, p in named])
    found = find_nonfinite(
        named,
        step=25,
        micro_batch=0,
        micro_batches=2,
        forward_finite=True,
        shape=(8, 576),
        backends={"cudnn": True},
    )
    assert found is not None
    assert found.first_nonfinite_grad == "layers.2.q_proj.lora_B.weight"
    assert (found.nonfinite_grads, found.trainable, found.forward_finite) == (3, 4, True)
    assert (found.rows, found.width, found.width_mod_128, found.step) == (8, 576, 64, 25)
    loss_only = find_nonfinite(
        _params([1.0, 1.0]),
        step=3,
        micro_batch=1,
        micro_batches=2,
        forward_finite=False,
        shape=(8, 100),
        backends=None,
    )
    assert loss_only is not None and loss_only.first_nonfinite_grad is None and not loss_only.forward_finite
