import pytest
import torch

from training.config import LossConfig, ModelConfig, PeftConfig
from training.modeling import LabelSchema, build_model, compute_losses, load_tokenizer, pool

SCHEMA = LabelSchema(["negative", "neutral", "positive"], ["earnings", "m&a", "ai"])


def _batch(tokenizer, texts, tickers):
    from training.tickers import find_mentions, spans_to_tokens

    enc = tokenizer(texts, return_offsets_mapping=True, padding=True, return_tensors="pt")
    n_ent = max(len(t) for t in tickers)
    mask = torch.zeros(len(texts), n_ent, enc["input_ids"].shape[1], dtype=torch.bool)
    for b, (text, ticks) in enumerate(zip(texts, tickers)):
        for e, tick in enumerate(ticks):
            mask[b, e, spans_to_tokens(enc["offset_mapping"][b].tolist(), find_mentions(text, tick))] = True
    return enc["input_ids"], enc["attention_mask"], mask


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_forward_shapes_and_ranges(fixture, request):
    path = request.getfixturevalue(fixture)
    model = build_model(ModelConfig(pretrained_model_name_or_path=path), PeftConfig(r=4), SCHEMA).eval()
    assert model.pooling == ("mean" if fixture == "tiny_bert" else "last")
    tok = load_tokenizer(path)
    ids, attn, mask = _batch(tok, ["$ACME up, $GLBX down", "$ACME flat"], [["ACME", "GLBX"], ["ACME"]])
    out = model(ids, attn, mask)
    assert out["sentiment_logits"].shape == (2, 3)
    assert out["topic_logits"].shape == (2, 3)
    assert out["ticker_score"].shape == (2, 2)
    assert out["sentiment_score"].abs().max() <= 1 and ((out["impact"] >= 0) & (out["impact"] <= 1)).all()


def test_lora_trains_only_adapter_and_heads(tiny_bert):
    model = build_model(ModelConfig(pretrained_model_name_or_path=tiny_bert), PeftConfig(r=4), SCHEMA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("heads.") for n in trainable)
    full = build_model(
        ModelConfig(pretrained_model_name_or_path=tiny_bert), PeftConfig(method="none"), SCHEMA
    )
    assert all(p.requires_grad for p in full.parameters())


def test_ticker_score_does_not_depend_on_other_tickers(tiny_bert):
    """One pass serves all tickers: adding a second ticker leaves the first one's score unchanged."""
    model = build_model(ModelConfig(pretrained_model_name_or_path=tiny_bert), PeftConfig(r=4), SCHEMA).eval()
    tok = load_tokenizer(tiny_bert)
    text = "$ACME beats while $GLBX misses"
    one = model(*_batch(tok, [text], [["ACME"]]))["ticker_score"]
    two = model(*_batch(tok, [text], [["ACME", "GLBX"]]))["ticker_score"]
    assert torch.allclose(one[0, 0], two[0, 0], atol=1e-6)
    assert not torch.allclose(two[0, 0], two[0, 1])


def test_last_token_pooling_ignores_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last")[:, 0].tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last")[:, 0].tolist() == [3.0, 7.0]
    assert pool(hidden, right, "mean")[:, 0].tolist() == [0.5, 5.5]


def test_loss_masks_heads_without_labels(tiny_bert):
    model = build_model(ModelConfig(pretrained_model_name_or_path=tiny_bert), PeftConfig(r=4), SCHEMA)
    tok = load_tokenizer(tiny_bert)
    ids, attn, mask = _batch(tok, ["$ACME up", "$ACME down"], [["ACME"], ["ACME"]])
    out = model(ids, attn, torch.zeros_like(mask)[:, :0])
    nan = torch.tensor([float("nan"), float("nan")])
    batch = {
        "sentiment_id": torch.tensor([2, -100]),
        "sentiment_score": nan,
        "impact": torch.tensor([float("nan"), 0.4]),
        "topic_targets": torch.full((2, 3), float("nan")),
        "entity_scores": torch.zeros(2, 0),
    }
    losses = compute_losses(out, batch, LossConfig())
    assert losses["sentiment_score"] == 0 and losses["topics"] == 0 and losses["tickers"] == 0
    losses["loss"].backward()
    # Unlabelled heads get an all-zero gradient (present, so DDP sees them used) ...
    for head in ("sentiment_score", "topics", "tickers"):
        grad = model.heads[head].weight.grad
        assert grad is not None and torch.count_nonzero(grad) == 0
    # ... and labelled heads learn.
    assert torch.count_nonzero(model.heads["sentiment"].weight.grad) > 0
    assert torch.count_nonzero(model.heads["impact"].weight.grad) > 0
    # Only row 0 has a sentiment label: its loss equals the plain cross-entropy of that row.
    ce = torch.nn.functional.cross_entropy(out["sentiment_logits"][:1], torch.tensor([2]))
    assert torch.allclose(losses["sentiment"], ce)
