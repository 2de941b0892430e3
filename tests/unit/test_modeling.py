import pytest
import torch

from training.config import LossConfig, ModelConfig, PeftConfig
from training.losses import compute_losses
from training.modeling import LabelSchema, build_model, load_tokenizer, pool

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


def test_ticker_loss_is_the_distance_to_the_label_span():
    """A coarse entity label's span costs nothing inside it (0.8 is a fine "positive or strongly positive"),
    the distance outside it; a point target (no bands, e.g. an older encoded cache) is plain squared error."""
    scores = torch.tensor([[0.8, 0.3, -0.2, 0.1]])
    out = {
        "sentiment_logits": torch.zeros(1, 3),
        "sentiment_score": torch.zeros(1),
        "impact_logits": torch.zeros(1),
        "topic_logits": torch.zeros(1, 3),
        "ticker_score": scores,
    }
    batch = {
        **_sentiment_only_batch([-100]),
        "entity_scores": torch.tensor([[0.5, 0.5, 0.0, float("nan")]]),
        "entity_bands": torch.tensor([[[0.5, 1.0], [0.5, 1.0], [0.0, 0.0], [float("nan")] * 2]]),
    }
    losses = compute_losses(out, batch, LossConfig())
    assert losses["tickers"].item() == pytest.approx((0.0 + 0.2**2 + 0.2**2) / 3)
    # loss.tickers_coarse_axis: a coarse label's distance counts in steps of the coarse axis (0.5 on five
    # levels); without it the unit is read but not used
    units = torch.tensor([[[1.0], [0.5], [0.5], [float("nan")]]])
    batch["entity_bands"] = torch.cat([batch["entity_bands"], units], -1)
    coarse = compute_losses(out, batch, LossConfig(tickers_coarse_axis=True))
    assert coarse["tickers"].item() == pytest.approx((0.0 + 0.4**2 + 0.4**2) / 3)
    assert compute_losses(out, batch, LossConfig())["tickers"].item() == pytest.approx(
        losses["tickers"].item()
    )
    del batch["entity_bands"]
    points = compute_losses(out, batch, LossConfig())
    assert points["tickers"].item() == pytest.approx((0.3**2 + 0.2**2 + 0.2**2) / 3)


def _sentiment_only_batch(labels):
    n = len(labels)
    return {
        "sentiment_id": torch.tensor(labels),
        "sentiment_score": torch.full((n,), float("nan")),
        "impact": torch.full((n,), float("nan")),
        "topic_targets": torch.full((n, 3), float("nan")),
        "entity_scores": torch.zeros(n, 0),
    }


def test_class_weights_and_label_smoothing_reach_the_sentiment_loss():
    from training.losses import balanced_class_weights

    labels = torch.tensor([0, 1, 1, 1, 1, 1, 1, 2, 2, -100])  # 1 : 6 : 2, one unlabelled row
    full = balanced_class_weights(labels, 3)
    assert torch.allclose(full, torch.tensor([6.0, 1.0, 3.0]) / (10 / 3))  # inverse frequency, mean 1
    sqrt = balanced_class_weights(labels, 3, power=0.5)
    assert torch.isclose(sqrt.mean(), torch.tensor(1.0)) and sqrt[0] / sqrt[1] == pytest.approx(6**0.5)
    assert balanced_class_weights(torch.tensor([0, 0, 2]), 3)[1] == 0  # absent class

    torch.manual_seed(0)
    out = {
        "sentiment_logits": torch.randn(4, 3),
        "sentiment_score": torch.zeros(4),
        "impact_logits": torch.zeros(4),
        "topic_logits": torch.zeros(4, 3),
        "ticker_score": torch.zeros(4, 0),
    }
    batch = _sentiment_only_batch([0, 1, 1, 2])
    plain = compute_losses(out, batch, LossConfig())["sentiment"]
    weighted = compute_losses(out, batch, LossConfig(), class_weights=full)["sentiment"]
    expected = torch.nn.functional.cross_entropy(out["sentiment_logits"], batch["sentiment_id"], weight=full)
    assert torch.allclose(weighted, expected) and not torch.allclose(weighted, plain)
    smoothed = compute_losses(out, batch, LossConfig(sentiment_label_smoothing=0.2))["sentiment"]
    expected = torch.nn.functional.cross_entropy(
        out["sentiment_logits"], batch["sentiment_id"], label_smoothing=0.2
    )
    assert torch.allclose(smoothed, expected) and not torch.allclose(smoothed, plain)


def test_ema_checkpoint_holds_the_average_and_resumes_both(tiny_bert):
    from training.config import OptimConfig
    from training.module import NewsImpactModule

    def module():
        torch.manual_seed(0)
        model = build_model(ModelConfig(pretrained_model_name_or_path=tiny_bert), PeftConfig(r=4), SCHEMA)
        return NewsImpactModule(model, OptimConfig(ema_decay=0.9), LossConfig())

    first = module()
    first.on_fit_start()
    assert first._ema is not None
    raw = [p.detach().clone() for p in first._trainable()]
    for average in first._ema:
        average.add_(1.0)  # an average that differs from the raw weights
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    names = [n for n, p in first.named_parameters() if p.requires_grad]
    assert list(checkpoint["state_dict"]) == names
    for name, now, before in zip(names, first._trainable(), raw):
        assert torch.equal(now, before)  # saving leaves the training weights alone
        assert torch.equal(checkpoint["raw_state_dict"][name], before)
        assert torch.equal(checkpoint["state_dict"][name], before + 1.0)  # what export loads

    second = module()
    for p in second._trainable():
        p.zero_()
    second.on_load_checkpoint(checkpoint)
    second.load_state_dict(checkpoint["state_dict"], strict=False)  # what Lightning does next
    second.on_fit_start()
    assert second._ema is not None
    for now, average, before in zip(second._trainable(), second._ema, raw):
        assert torch.equal(now, before) and torch.equal(average, before + 1.0)
    second._swap_ema()  # validation sees the average
    assert all(torch.equal(p, b + 1.0) for p, b in zip(second._trainable(), raw))


def test_rdrop_adds_the_symmetric_kl_of_two_dropout_passes(tiny_bert):
    import warnings

    from training.config import OptimConfig
    from training.losses import symmetric_kl
    from training.module import NewsImpactModule

    a, b = torch.randn(5, 3), torch.randn(5, 3)
    p, q = a.softmax(-1), b.softmax(-1)
    manual = ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean() / 2
    assert torch.allclose(symmetric_kl(a, b), manual, atol=1e-6) and symmetric_kl(a, a) == 0

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(pretrained_model_name_or_path=tiny_bert, head_dropout=0.3), PeftConfig(r=4), SCHEMA
    )
    module = NewsImpactModule(model, OptimConfig(), LossConfig(sentiment_rdrop=2.0))
    ids, attn, _ = _batch(load_tokenizer(tiny_bert), ["$ACME beats", "$GLBX misses badly"], [[], []])
    batch = {"input_ids": ids, "attention_mask": attn, **_sentiment_only_batch([0, 2])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        module.eval()  # no dropout: both copies agree and the loss is the plain one
        plain = compute_losses(module(batch), batch, LossConfig())["loss"]
        assert torch.allclose(module.training_step(batch, 0), plain, atol=1e-6)
        module.train()
        torch.manual_seed(1)
        loss = module.training_step(batch, 0)
    torch.manual_seed(1)
    doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
    out = module(doubled)
    kl = symmetric_kl(out["sentiment_logits"][:2], out["sentiment_logits"][2:])
    assert kl > 0
    assert torch.allclose(loss, compute_losses(out, doubled, LossConfig())["loss"] + 2.0 * kl, atol=1e-6)


def test_backbone_dropout_rate_and_train_mode(tiny_bert):
    """from_pretrained hands back an eval-mode backbone and Lightning keeps module modes as they are: the
    module switches the model to train mode when fitting starts, and model.backbone_dropout sets the rates."""
    from training.config import OptimConfig
    from training.module import NewsImpactModule

    model = build_model(
        ModelConfig(pretrained_model_name_or_path=tiny_bert, backbone_dropout=0.3),
        PeftConfig(r=4, lora_dropout=0.05, fast_dropout=False),
        SCHEMA,
    )
    rates = {n: m.p for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Dropout)}
    lora = {n: p for n, p in rates.items() if "lora_dropout" in n}
    assert lora and set(lora.values()) == {0.05}
    assert len(rates) > len(lora) and {p for n, p in rates.items() if n not in lora} == {0.3}
    assert not all(m.training for m in model.backbone.modules())  # as loaded
    NewsImpactModule(model, OptimConfig(), LossConfig()).on_fit_start()
    assert all(m.training for m in model.modules())

    own = build_model(ModelConfig(pretrained_model_name_or_path=tiny_bert), PeftConfig(r=4), SCHEMA)
    config = own.backbone.config
    own_rates = {
        m.p for n, m in own.backbone.named_modules() if isinstance(m, torch.nn.Dropout) and "lora" not in n
    }
    assert own_rates == {config.hidden_dropout_prob, config.attention_probs_dropout_prob}


def test_byte_dropout_is_dropout_with_p_rounded_to_1_256(tiny_bert):
    from training.modeling import ByteDropout

    drop = ByteDropout(0.1).train()
    assert drop.threshold == 26
    torch.manual_seed(0)
    x = torch.ones(400, 1000, requires_grad=True)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 26 / 256) < 0.003  # 400k draws: the standard error is ~0.0005
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted dropout keeps the expectation
    assert torch.allclose(y[y != 0], torch.tensor(256 / 230))
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the gradient uses the same mask
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded like torch's own dropout
    assert drop.eval()(x) is x and ByteDropout(0.001).train()(x) is x  # eval, or p rounds to 0

    fast = build_model(ModelConfig(pretrained_model_name_or_path=tiny_bert), PeftConfig(r=4), SCHEMA)
    plain = build_model(
        ModelConfig(pretrained_model_name_or_path=tiny_bert), PeftConfig(r=4, fast_dropout=False), SCHEMA
    )
    fast_lora = [m for n, m in fast.named_modules() if "lora_dropout." in n]
    plain_lora = [m for n, m in plain.named_modules() if "lora_dropout." in n]
    assert fast_lora and all(isinstance(m, ByteDropout) and m.p == 0.05 for m in fast_lora)
    assert len(plain_lora) == len(fast_lora) and all(type(m) is torch.nn.Dropout for m in plain_lora)


def test_topic_attention_starts_as_mean_pooling_and_ignores_padding(tiny_bert):
    """Label-wise topic attention: zero-initialised it is the mean-pooled topic head; padding gets no
    attention; once a topic's query prefers some tokens, that topic reads them and the others do not move."""
    torch.manual_seed(0)
    cfg = ModelConfig(pretrained_model_name_or_path=tiny_bert)
    chunk = build_model(cfg, PeftConfig(r=4), SCHEMA).eval()
    attention = build_model(
        ModelConfig(pretrained_model_name_or_path=tiny_bert, topic_pooling="attention"),
        PeftConfig(r=4),
        SCHEMA,
    ).eval()
    attention.load_state_dict(chunk.state_dict(), strict=False)  # same backbone and heads; fresh queries
    assert "topic_attention" in attention.heads and "topic_attention" not in chunk.heads
    tok = load_tokenizer(tiny_bert)
    ids, attn, _ = _batch(
        tok, ["Acme beats estimates", "Acme beats estimates on strong cloud demand"], [[], []]
    )
    with torch.no_grad():
        same = attention(ids, attn)["topic_logits"]
        assert torch.allclose(same, chunk(ids, attn)["topic_logits"], atol=1e-5)
        # the first row is padded: its logits equal those of the row alone
        alone = attention(ids[:1, : int(attn[0].sum())], attn[:1, : int(attn[0].sum())])["topic_logits"]
        assert torch.allclose(same[:1], alone, atol=1e-5)
        hidden = attention.backbone(input_ids=ids, attention_mask=attn).last_hidden_state
        attention.heads["topic_attention"].weight[0] = hidden[1, 3] * 50  # "earnings" looks at one token
        moved = attention(ids, attn)["topic_logits"]
    assert not torch.allclose(moved[1, 0], same[1, 0], atol=1e-3)
    assert torch.allclose(moved[:, 1:], same[:, 1:], atol=1e-5)
    assert ModelConfig().topic_pooling == "chunk"


def _subset_reference(out, batch, class_weights, smoothing, membership):
    """The masked losses computed the plain way, on the labelled rows only (boolean indexing, as the
    losses did before they dropped their host syncs): what the sync-free losses must equal."""
    import torch.nn.functional as F

    target, group = batch["sentiment_id"], batch["sentiment_group"]
    fine, coarse = target != -100, (target == -100) & (group >= 0)
    total, count = torch.zeros(()), torch.zeros(())
    if fine.any():
        per_row = F.cross_entropy(
            out["sentiment_logits"][fine], target[fine], weight=class_weights, label_smoothing=smoothing,
            reduction="none",
        )  # fmt: skip
        total = total + per_row.sum()
        count = count + (class_weights[target[fine]].sum() if class_weights is not None else fine.sum())
    if coarse.any():
        log_p = torch.log_softmax(out["sentiment_logits"][coarse], -1)
        member = membership > 0
        per_group = -torch.logsumexp(log_p[:, None, :].masked_fill(~member[None], float("-inf")), -1)
        nll = per_group.gather(1, group[coarse][:, None]).squeeze(1)
        nll = (1 - smoothing) * nll + smoothing * per_group.mean(1) if smoothing else nll
        total, count = total + nll.sum(), count + coarse.sum()
    losses = {"sentiment": total / count.clamp(min=1)}
    for key, pred in (("sentiment_score", out["sentiment_score"]), ("impact", out["impact_logits"])):
        rows = ~torch.isnan(batch[key])
        if not rows.any():
            losses[key] = torch.zeros(())
        elif key == "impact":
            losses[key] = F.binary_cross_entropy_with_logits(pred[rows], batch[key][rows])
        else:
            losses[key] = ((pred[rows] - batch[key][rows]) ** 2).mean()
    rows = ~torch.isnan(batch["topic_targets"])
    losses["topics"] = (
        F.binary_cross_entropy_with_logits(out["topic_logits"][rows], batch["topic_targets"][rows])
        if rows.any()
        else torch.zeros(())
    )
    rows = ~torch.isnan(batch["entity_scores"])
    losses["tickers"] = (
        ((out["ticker_score"][rows] - batch["entity_scores"][rows]) ** 2).mean()
        if rows.any()
        else torch.zeros(())
    )
    return losses


@pytest.mark.parametrize("seed", range(6))
def test_sync_free_masked_losses_equal_the_labelled_rows_mean(seed):
    """Every head's loss without ``mask.any()`` or boolean indexing (no host sync per step) equals the mean
    over the rows that carry its label, for mixes where some heads have no label at all, with class
    weights, label smoothing and coarse-only rows; an unlabelled head gives 0 and a zero gradient."""
    from training.config import SchemaConfig
    from training.scale import Scale

    gen = torch.Generator().manual_seed(seed)
    scale = Scale.of(SchemaConfig())  # five levels: coarse-only rows name a class of several labels
    n, k, topics, slots = 12, len(scale.labels), 4, 3

    def some(values, p):  # NaN (unlabelled) where a coin says so; every value NaN for p = 1
        drop = torch.rand(values.shape, generator=gen) < p
        return values.masked_fill(drop, float("nan"))

    p_missing = [0.0, 0.5, 1.0][seed % 3]
    target = torch.randint(0, k, (n,), generator=gen)
    target = target.masked_fill(torch.rand(n, generator=gen) < max(p_missing, 0.3), -100)
    group = torch.randint(0, len(scale.coarse), (n,), generator=gen).masked_fill(target != -100, -1)
    batch = {
        "sentiment_id": target,
        "sentiment_group": group,
        "sentiment_score": some(torch.rand(n, generator=gen) * 2 - 1, p_missing),
        "impact": some(torch.rand(n, generator=gen), p_missing),
        "topic_targets": some(torch.randint(0, 2, (n, topics), generator=gen).float(), p_missing),
        "entity_scores": some(torch.rand(n, slots, generator=gen) * 2 - 1, p_missing),
    }
    out = {
        "sentiment_logits": torch.randn(n, k, generator=gen, requires_grad=True),
        "sentiment_score": torch.randn(n, generator=gen, requires_grad=True),
        "impact_logits": torch.randn(n, generator=gen, requires_grad=True),
        "topic_logits": torch.randn(n, topics, generator=gen, requires_grad=True),
        "ticker_score": torch.randn(n, slots, generator=gen, requires_grad=True),
    }
    weights = torch.rand(k, generator=gen) + 0.5 if seed % 2 else None
    smoothing = 0.1 if seed >= 3 else 0.0
    membership = torch.as_tensor(scale.membership, dtype=torch.float32)
    got = compute_losses(out, batch, LossConfig(sentiment_label_smoothing=smoothing), weights, membership)
    want = _subset_reference(out, batch, weights, smoothing, membership)
    for head, value in want.items():
        assert got[head].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), head
    got["loss"].backward()
    for name, tensor in out.items():
        assert torch.isfinite(tensor.grad).all(), name
    if p_missing == 1.0:  # no label for the regression, topic and ticker heads: zero loss, zero gradient
        for head, name in (
            ("impact", "impact_logits"),
            ("topics", "topic_logits"),
            ("tickers", "ticker_score"),
        ):
            assert got[head].item() == 0.0 and not out[name].grad.any()
