import platform

import pytest
import torch

from inference.cpu_ops import InplaceGELU, keep_heap_memory, use_inplace_gelu


def test_inplace_gelu_is_exact_and_leaves_training_alone(tiny_bert):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert).eval()
    ids = torch.randint(5, 1000, (3, 17))
    with torch.inference_mode():
        before = model(input_ids=ids).last_hidden_state
    assert use_inplace_gelu(model) == model.config.num_hidden_layers
    assert use_inplace_gelu(model) == 0  # already swapped
    with torch.inference_mode():
        after = model(input_ids=ids).last_hidden_state
    assert torch.equal(before, after)

    act = InplaceGELU()
    x = torch.randn(4, 8)
    with torch.inference_mode():
        y = x.clone()
        assert act(y) is y and torch.equal(y, torch.nn.functional.gelu(x))  # overwrote its input
    leaf = x.clone().requires_grad_()
    out = act(leaf * 1.0)  # with autograd: a new tensor, gradients flow
    out.sum().backward()
    assert leaf.grad is not None and torch.equal(x, leaf.detach())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc mallopt")
def test_keep_heap_memory_applies_on_glibc_unless_the_user_chose(monkeypatch):
    assert keep_heap_memory() is True
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_heap_memory() is False
