"""The loss heads (``linear_ce.py``): ``scored`` and ``chunked`` give the reference ``full`` path's
loss and every gradient, for both objectives, pretraining and fine-tuning; ``full`` is the code
mdmctl had before them, operation for operation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mdmctl.autoregressive import arm_loss, arm_sft_nll, arm_train_loss
from mdmctl.config import ModelConfig
from mdmctl.diffusion import forward_mask, masked_ce_sum, masked_loss, mdm_loss, mdm_sft_loss
from mdmctl.linear_ce import chunk_rows, linear_cross_entropy
from mdmctl.model import Transformer

V = 97  # mask id 96 for the MDM


def _model(objective: str = "mdm", seq_len: int = 32) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(
        "tiny", objective=objective, vocab_size=V, mask_id=V - 1 if objective == "mdm" else -1,
        seq_len=seq_len,
    )  # fmt: skip
    return Transformer(cfg)


def _grads(model: Transformer, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and every parameter's gradient (zeros where none flowed)."""
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in model.named_parameters()}  # fmt: skip
    return loss.detach(), grads


def _assert_same(ref, other, atol=1e-6):
    (l0, g0), (l1, g1) = ref, other
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=atol)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=atol, msg=name)


def test_linear_cross_entropy_matches_the_logits_path():
    torch.manual_seed(1)
    N, D = 50, 16
    h = torch.randn(N, D, requires_grad=True)
    W = torch.randn(V, D, requires_grad=True)
    y = torch.randint(0, V - 1, (N,))
    w = torch.rand(N)
    for rows in (7, 50, 64):  # uneven chunks, one chunk, a chunk longer than N
        loss = linear_cross_entropy(h, W, y, w, banned=V - 1, rows=rows)
        (3 * loss).backward()
        gh, gw = h.grad, W.grad
        h.grad = W.grad = None
        logits = h @ W.t()
        logits = torch.cat([logits[:, :-1], torch.full((N, 1), float("-inf"))], 1)
        ref = (F.cross_entropy(logits, y, reduction="none") * w).sum()
        (3 * ref).backward()
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(gh, h.grad)
        torch.testing.assert_close(gw, W.grad)
        assert gw[V - 1].abs().max() == 0  # the banned column gets no gradient
        h.grad = W.grad = None


def test_a_banned_target_gives_the_logits_paths_inf_and_gradients():
    """A literal mask id in x0 (data that contains the mask token): an infinite loss, as the
    full path gives (the loop then skips or stops), and no gradient through the mask column."""
    torch.manual_seed(2)
    h = torch.randn(6, 8, requires_grad=True)
    W = torch.randn(V, 8, requires_grad=True)
    y = torch.tensor([1, V - 1, 3, 4, V - 1, 5])
    loss = linear_cross_entropy(h, W, y, torch.ones(6), banned=V - 1, rows=4)
    loss.backward()
    gh, gw = h.grad, W.grad
    h.grad = W.grad = None
    logits = (h @ W.t()).index_fill(1, torch.tensor([V - 1]), float("-inf"))
    ref = F.cross_entropy(logits, y, reduction="sum")
    ref.backward()
    assert torch.isinf(loss) and torch.isinf(ref)
    torch.testing.assert_close(gh, h.grad)
    torch.testing.assert_close(gw, W.grad)


def test_linear_cross_entropy_with_no_rows_and_without_grad():
    W = torch.randn(V, 8, requires_grad=True)
    h = torch.zeros(0, 8, requires_grad=True)
    loss = linear_cross_entropy(h, W, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    loss.backward()
    assert loss.item() == 0 and torch.equal(W.grad, torch.zeros_like(W))
    with torch.no_grad():
        h = torch.randn(4, 8)
        y = torch.tensor([1, 2, 3, 4])
        ref = F.cross_entropy(h @ W.t(), y, reduction="sum")
        torch.testing.assert_close(linear_cross_entropy(h, W, y, torch.ones(4), rows=3), ref)


def test_chunk_rows_bounds():
    assert chunk_rows(32_000) == 256  # the row floor
    assert chunk_rows(2048) == 2048  # 2**22 logits
    assert chunk_rows(10**9) == 256


@pytest.mark.parametrize("batch,length", [(4, 32), (1, 7), (3, 17)])
@pytest.mark.parametrize("seed", [0, 1])
def test_mdm_loss_heads_agree(batch, length, seed):
    model = _model()
    x0 = torch.randint(0, V - 1, (batch, length), generator=torch.Generator().manual_seed(seed))
    runs = {
        head: _grads(model, lambda h=head: mdm_loss(
            model, x0, V - 1, torch.Generator().manual_seed(seed), head=h))
        for head in ("full", "scored", "chunked")
    }  # fmt: skip
    _assert_same(runs["full"], runs["scored"])
    _assert_same(runs["full"], runs["chunked"])


@pytest.mark.parametrize("head", ["scored", "chunked"])
def test_rows_with_nothing_and_everything_masked(head):
    """Per-row masks chosen by hand: row 0 nothing masked, row 1 everything, rows 2-3 half, at
    several t; and a batch with nothing masked at all (zero loss, zero gradients)."""
    model = _model()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, V - 1, (4, 24), generator=g)
    masked = torch.rand(4, 24, generator=g) < 0.5
    masked[0], masked[1] = False, True
    p = torch.tensor([0.05, 0.999, 0.3, 0.7])
    xt = torch.where(masked, V - 1, x0)
    for m in (masked, torch.zeros_like(masked)):
        ref = _grads(model, lambda m=m: masked_loss(model, xt, x0, m, p, x0.numel(), "full"))
        got = _grads(model, lambda m=m: masked_loss(model, xt, x0, m, p, x0.numel(), head))
        _assert_same(ref, got)
    assert ref[0].item() == 0.0 and all(g.abs().max() == 0 for g in ref[1].values())


@pytest.mark.parametrize("conditional", [True, False])
def test_mdm_sft_loss_heads_agree(conditional):
    model = _model()
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, V - 1, (3, 20), generator=g)
    pm = torch.zeros(3, 20, dtype=torch.bool)
    pm[:, :6] = True
    runs = {
        head: _grads(model, lambda h=head: mdm_sft_loss(
            model, x0, pm, V - 1, torch.Generator().manual_seed(5), conditional=conditional,
            cfg_dropout=0.5, head=h))
        for head in ("full", "scored", "chunked")
    }  # fmt: skip
    _assert_same(runs["full"], runs["scored"])
    _assert_same(runs["full"], runs["chunked"])


def test_arm_loss_heads_agree_with_and_without_a_target_mask():
    model = _model("arm")
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, V, (3, 21), generator=g)
    response = torch.zeros(3, 21, dtype=torch.bool)
    response[0, 5:], response[1, 12:] = True, True  # row 2 has no response at all
    for target_mask in (None, response):
        runs = {h: _grads(model, lambda h=h, m=target_mask: arm_train_loss(model, x, m, h))
                for h in ("full", "scored", "chunked")}  # fmt: skip
        _assert_same(runs["full"], runs["scored"])
        _assert_same(runs["full"], runs["chunked"])


def test_document_masks_pass_through_the_scored_heads():
    from functools import partial

    model = _model()
    g = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, V - 1, (2, 32), generator=g)
    doc = torch.tensor([[0] * 10 + [1] * 22, [0] * 32])
    on_docs = partial(model, doc_ids=doc)
    ref = _grads(model, lambda: mdm_loss(on_docs, x0, V - 1, torch.Generator().manual_seed(0)))
    got = _grads(model, lambda: mdm_loss(
        on_docs, x0, V - 1, torch.Generator().manual_seed(0), head="chunked"))  # fmt: skip
    _assert_same(ref, got)


def test_full_head_is_the_earlier_code_operation_for_operation():
    """``full`` computes exactly what mdmctl computed before the loss heads existed (the
    expressions below are the earlier ``mdm_loss`` and the fine-tuning ARM loss)."""
    model = _model()
    x0 = torch.randint(0, V - 1, (4, 32), generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(9)
    t = torch.rand(4, generator=g)
    p = (1 - 1e-3) * t + 1e-3
    xt, masked = forward_mask(x0, p, V - 1, g)
    earlier = (masked_ce_sum(model(xt), x0, masked) / p).sum() / x0.numel()
    assert torch.equal(mdm_loss(model, x0, V - 1, torch.Generator().manual_seed(9)), earlier)
    arm = _model("arm")
    rm = torch.ones(4, 32, dtype=torch.bool)
    rm[:, :5] = False
    logits = arm(x0)
    assert torch.equal(arm_train_loss(arm, x0), arm_loss(logits, x0))
    earlier = arm_sft_nll(logits, x0, rm).sum() / rm[:, 1:].sum().clamp(min=1)
    assert torch.equal(arm_train_loss(arm, x0, rm), earlier)


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_loss():
    """``--compile``: each block torch.compile'd in place; the same loss and gradients."""
    pytest.importorskip("torch._inductor")
    model = _model()
    x0 = torch.randint(0, V - 1, (2, 32), generator=torch.Generator().manual_seed(10))
    eager = _grads(model, lambda: mdm_loss(
        model, x0, V - 1, torch.Generator().manual_seed(0), head="chunked"))  # fmt: skip
    for block in model.blocks:
        block.compile()
    compiled = _grads(model, lambda: mdm_loss(
        model, x0, V - 1, torch.Generator().manual_seed(0), head="chunked"))  # fmt: skip
    _assert_same(eager, compiled, atol=1e-5)
    assert [n for n, _ in model.named_parameters()][0] == "tok_emb.weight"  # names unchanged
