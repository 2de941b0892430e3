"""The scorer's CPU attention gives the same hidden states as SDPA, and leaves what it does not cover to SDPA."""

import torch
from transformers import AutoModel, AutoTokenizer

from inference import attention


def _hidden(model, batch):
    with torch.inference_mode():
        return model(**batch).last_hidden_state


def _batch(path):
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = ["Acme beats estimates", "Acme misses estimates and cuts its outlook for the year"]
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_bmm_attention_matches_sdpa_with_and_without_padding(tiny_bert):
    model = AutoModel.from_pretrained(tiny_bert, attn_implementation="sdpa").eval()
    padded = _batch(tiny_bert)
    unpadded = {k: v[1:] for k, v in padded.items()}  # the longest row alone: no padding, no mask
    expected = [_hidden(model, padded), _hidden(model, unpadded)]
    calls = []
    original = attention.bmm_attention

    def counting(*args, **kwargs):
        calls.append(args[4] is None)
        return original(*args, **kwargs)

    attention.bmm_attention = counting
    try:
        attention.register()
        assert attention.use_cpu_attention(model)
        from transformers import AttentionInterface

        AttentionInterface.register(attention.NAME, counting)
        got = [_hidden(model, padded), _hidden(model, unpadded)]
    finally:
        attention.bmm_attention = original
        attention.register()
    assert model.config._attn_implementation == attention.NAME
    assert True in calls and False in calls  # both the masked and the mask-free path ran
    mask = padded["attention_mask"].bool()
    torch.testing.assert_close(got[0][mask], expected[0][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)


def test_causal_models_fall_through_to_sdpa(tiny_llama):
    model = AutoModel.from_pretrained(tiny_llama, attn_implementation="sdpa").eval()
    batch = _batch(tiny_llama)
    expected = _hidden(model, batch)
    attention.register()
    assert attention.use_cpu_attention(model)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(_hidden(model, batch)[mask], expected[mask], atol=1e-6, rtol=1e-6)


def test_a_model_without_the_interface_is_left_alone():
    assert attention.use_cpu_attention(torch.nn.Linear(2, 2)) is False
