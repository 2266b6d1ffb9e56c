"""The likelihood engine: estimators against direct computations, batching, CFG, greedy."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mdmctl.config import ModelConfig
from mdmctl.errors import ConfigError
from mdmctl.evaluation.likelihood import ScoreConfig, loglikelihood
from mdmctl.model import Transformer

V, MASK, EOS = 40, 39, 0


def _model(objective: str, seed: int = 0, seq_len: int = 32, sharp: float = 8.0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig.from_name(
        "tiny", vocab_size=V, mask_id=MASK, seq_len=seq_len, objective=objective
    )
    m = Transformer(cfg).eval()
    with torch.no_grad():  # sharper than the default init, so estimators differ visibly
        m.head.weight.mul_(sharp)
    return m


def _score(model, reqs, **kw):
    return loglikelihood(model, reqs, ScoreConfig(**kw), eos_id=EOS, device="cpu")


def _requests(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    return [
        (
            [rng.randrange(3, MASK) for _ in range(rng.randint(0, 9))],
            [rng.randrange(3, MASK) for _ in range(rng.randint(1, 5))],
        )
        for _ in range(n)
    ]


@torch.no_grad()
def _cond_logp(model, x: list[int], pos: int, target: int, prompt_len: int, w: float) -> float:
    """log p(target at pos | x) with CFG written out: uncond + (w + 1)(cond - uncond)."""
    cond = model(torch.tensor([x]))[0, pos]
    if w:
        unc_x = [MASK] * prompt_len + x[prompt_len:]
        unc = model(torch.tensor([unc_x]))[0, pos]
        cond = torch.where(torch.isinf(cond), cond, unc + (w + 1) * (cond - unc))
    return float(torch.log_softmax(cond, -1)[target])


@pytest.mark.parametrize("w", [0.0, 0.8])
def test_chain_rule_equals_direct_computation_with_and_without_cfg(w):
    m = _model("mdm")
    ctx, cont = [5, 6, 7], [8, 9, 10]
    direct = sum(
        _cond_logp(m, ctx + cont[:j] + [MASK] * (3 - j), 3 + j, cont[j], 3, w) for j in range(3)
    )
    (s,) = _score(m, [(ctx, cont)], estimator="chain-rule", cfg=w)
    assert s.logprob == pytest.approx(direct, abs=1e-4)
    assert s.stderr == 0 and s.tokens == 3 and not s.truncated


def test_cfg_changes_the_score():
    m = _model("mdm")
    reqs = [([5, 6, 7], [8, 9])]
    a = _score(m, reqs, estimator="chain-rule", cfg=0.0)[0].logprob
    b = _score(m, reqs, estimator="chain-rule", cfg=1.5)[0].logprob
    assert abs(a - b) > 1e-3


def test_arm_equals_direct_computation():
    m = _model("arm")
    ctx, cont = [5, 6, 7], [8, 9, 10]
    with torch.no_grad():
        lp = torch.log_softmax(m(torch.tensor([[EOS, *ctx, *cont]]))[0], -1)
    direct = sum(float(lp[3 + j, cont[j]]) for j in range(3))  # position i predicts i + 1
    (s,) = _score(m, [(ctx, cont)])
    assert s.logprob == pytest.approx(direct, abs=1e-4) and s.stderr == 0
    greedy = all(int(lp[3 + j].argmax()) == cont[j] for j in range(3))
    assert s.is_greedy == greedy


def test_mc_one_token_converges_to_chain_rule():
    """One continuation token: masked with probability t and weighted 1/t, the MC mean is exact."""
    m = _model("mdm")
    reqs = [([5, 6, 7, 8], [9]), ([], [11])]
    exact = _score(m, reqs, estimator="chain-rule")
    mc = _score(m, reqs, estimator="mc", mc_samples=2048)
    for e, s in zip(exact, mc, strict=True):
        assert s.stderr > 0
        assert abs(s.logprob - e.logprob) < 4 * s.stderr + 0.01 * abs(e.logprob)


def test_mc_is_a_lower_bound_on_the_exact_two_token_likelihood():
    """For two tokens the MDM's reverse process reveals them in one of two equally likely orders,
    so log p = log(½ q_ab + ½ q_ba) exactly. The MC estimator's expectation is the ELBO,
    E[p]·(log p_a + log p_b) + E[1 - p]·(log p_a|b + log p_b|a) with p uniform on [eps, 1]; the
    MC mean over several seeds matches it, and it lies below the exact value (Jensen)."""
    m = _model("mdm", seed=0, sharp=4.0)
    ctx, (a, b) = [5, 6], (8, 9)
    lpa0 = _cond_logp(m, ctx + [MASK, MASK], 2, a, 2, 0)
    lpb0 = _cond_logp(m, ctx + [MASK, MASK], 3, b, 2, 0)
    lpb_a = _cond_logp(m, ctx + [a, MASK], 3, b, 2, 0)
    lpa_b = _cond_logp(m, ctx + [MASK, b], 2, a, 2, 0)
    q_ab, q_ba = lpa0 + lpb_a, lpb0 + lpa_b
    exact = math.log(0.5 * math.exp(q_ab) + 0.5 * math.exp(q_ba))
    eps = 1e-3
    elbo = (1 + eps) / 2 * (lpa0 + lpb0) + (1 - eps) / 2 * (lpa_b + lpb_a)
    assert exact - elbo > 0.5  # the model is inconsistent enough for a visible gap
    runs = [_score(m, [(ctx, [a, b])], mc_samples=2048, seed=k)[0] for k in range(8)]
    mean = sum(r.logprob for r in runs) / len(runs)
    se = math.sqrt(sum(r.stderr**2 for r in runs)) / len(runs)
    assert abs(mean - elbo) < 4 * se
    assert mean < exact
    # the chain rule is one of the two orders
    (c,) = _score(m, [(ctx, [a, b])], estimator="chain-rule")
    assert c.logprob == pytest.approx(q_ab, abs=1e-4)


def test_mc_count_is_llada_s_estimator_with_the_elbo_as_its_mean():
    """LLaDA's estimator: exactly k of the C tokens masked, k stratified over 1..C, weight C/k.
    Its expectation, (1/C) Σ_k (C/k) mean_{|M|=k} Σ_{i in M} log p(x_i | x with M masked), is
    enumerated here for three tokens; the estimate over several seeds matches it."""
    from itertools import combinations

    from mdmctl.evaluation import likelihood as lk

    masks, w = lk._mc_masks(ScoreConfig(estimator="mc-count", mc_samples=12), 5, 3, 32)
    k = masks.sum(1)
    # stratified over 1..3 (LLaDA's rounded linspace: nearly even)
    assert all(3 <= int((k == n).sum()) <= 5 for n in (1, 2, 3))
    assert torch.equal(w, 3 / k.double())
    m = _model("mdm", seed=0, sharp=4.0)
    ctx, cont = [5, 6], [8, 9, 10]
    expect = 0.0
    for n_masked in (1, 2, 3):
        subsets = list(combinations(range(3), n_masked))
        for sub in subsets:
            xt = ctx + [MASK if j in sub else tok for j, tok in enumerate(cont)]
            lp = sum(_cond_logp(m, xt, 2 + j, cont[j], 2, 0) for j in sub)
            expect += (1 / 3) * (3 / n_masked) * lp / len(subsets)
    runs = [_score(m, [(ctx, cont)], estimator="mc-count", mc_samples=512, seed=s)[0]
            for s in range(6)]  # fmt: skip
    mean = sum(r.logprob for r in runs) / len(runs)
    se = math.sqrt(sum(r.stderr**2 for r in runs)) / len(runs)
    assert abs(mean - expect) < 4 * se and se > 0
    mc = [_score(m, [(ctx, cont)], estimator="mc", mc_samples=512, seed=s)[0] for s in range(6)]
    mc_se = math.sqrt(sum(r.stderr**2 for r in mc)) / len(mc)
    assert se < mc_se  # no clean samples, weights at most C: less variance than mc's 1/t


@pytest.mark.parametrize(
    "objective,estimator",
    [("mdm", "mc"), ("mdm", "mc-count"), ("mdm", "chain-rule"), ("arm", "mc")],
)
def test_results_do_not_depend_on_batch_size_or_order(objective, estimator):
    m = _model(objective)
    reqs = _requests(12)
    kw = dict(estimator=estimator, mc_samples=16, greedy=True, cfg=0.5 * (objective == "mdm"))
    one = _score(m, reqs, batch_size=1, **kw)
    many = _score(m, reqs, batch_size=64, **kw)
    perm = list(range(len(reqs)))
    random.Random(1).shuffle(perm)
    shuffled = _score(m, [reqs[i] for i in perm], batch_size=7, **kw)
    for i, (a, b) in enumerate(zip(one, many, strict=True)):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.logprob == pytest.approx(shuffled[perm.index(i)].logprob, abs=1e-4)
        assert a.is_greedy == b.is_greedy == shuffled[perm.index(i)].is_greedy


def test_mc_equals_a_per_request_loop_on_the_same_draws():
    """Deduplicated, batched rows give what one forward per (request, sample) gives."""
    from mdmctl.data.batches import mix  # noqa: F401  (the engine's seeding is internal)
    from mdmctl.evaluation import likelihood as lk

    m = _model("mdm")
    ctx, cont = [4, 5, 6], [7, 8, 9, 10]
    n = 32
    g = torch.Generator().manual_seed(lk._context_key(0, ctx))
    t = lk.stratified_t(n, g, 1e-3)
    u = torch.rand(n, m.cfg.seq_len, generator=g)[:, : len(cont)]
    vals = []
    for s in range(n):
        masked = (u[s] < t[s]).tolist()
        xt = ctx + [MASK if k else tok for k, tok in zip(masked, cont, strict=True)]
        tot = sum(_cond_logp(m, xt, 3 + j, cont[j], 3, 0) for j in range(4) if masked[j])
        vals.append(tot / float(t[s]))
    (sc,) = _score(m, [(ctx, cont)], estimator="mc", mc_samples=n)
    assert sc.logprob == pytest.approx(sum(vals) / n, abs=1e-4)
    assert sc.stderr == pytest.approx(float(torch.tensor(vals).std()) / math.sqrt(n), rel=1e-3)


def test_mdm_greedy_flag_matches_the_confidence_sampler():
    """The continuation the one-token-per-step confidence sampler produces is greedy; a changed
    token is not. (One token per step is LLaDA's schedule at steps = length; SMDM's reveals none
    at the first step and two at the last.)"""
    from mdmctl.sampling.mdm import Decoding, sample_mdm

    m = _model("mdm")
    ctx = [5, 6, 7]
    out = sample_mdm(
        lambda x, d: m(x, doc_ids=d),
        [ctx],
        length=4,
        steps=4,
        mask_id=MASK,
        pad_id=MASK - 1,
        generator=torch.Generator().manual_seed(0),
        decoding=Decoding(schedule="llada"),
    )
    y = out.tokens[0].tolist()
    other = y[:2] + [(y[2] + 1) % (MASK - 1)] + y[3:]
    a, b = _score(m, [(ctx, y), (ctx, other)], estimator="chain-rule", greedy=True)
    assert a.is_greedy is True and b.is_greedy is False
    assert _score(m, [(ctx, y)], estimator="chain-rule")[0].is_greedy is None


def test_arm_greedy_flag_matches_greedy_sampling():
    from mdmctl.sampling.arm import sample_arm

    m = _model("arm")
    ctx = [5, 6, 7]
    (y,), _ = sample_arm(
        m,
        [ctx],
        length=4,
        eos_id=EOS,
        generator=torch.Generator(),
        temperature=0.0,
        stop_at_eos=False,
    )
    other = y[:-1] + [(y[-1] + 1) % MASK]
    a, b = _score(m, [(ctx, y), (ctx, other)])
    assert a.is_greedy is True and b.is_greedy is False


def test_long_context_is_cut_on_the_left():
    m = _model("mdm", seq_len=16)
    ctx, cont = list(range(3, 23)), [30, 31]
    (s,) = _score(m, [(ctx, cont)], estimator="chain-rule")
    (r,) = _score(m, [(ctx[-14:], cont)], estimator="chain-rule")
    assert s.truncated and not r.truncated
    assert s.logprob == pytest.approx(r.logprob, abs=1e-5)
    arm = _model("arm", seq_len=16)
    (a,) = _score(arm, [(ctx, cont)])
    (b,) = _score(arm, [(ctx[-14:], cont)])  # eos + 14 + 2 > 16: the eos goes first
    assert a.truncated and a.logprob == pytest.approx(b.logprob, abs=1e-5)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="--estimator"):
        ScoreConfig(estimator="exact")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--mc-samples"):
        ScoreConfig(mc_samples=0)
    with pytest.raises(ConfigError, match="--cfg"):
        ScoreConfig(cfg=-1)
    with pytest.raises(ConfigError, match="empty continuation"):
        _score(_model("mdm"), [([1], [])])


def test_chunking_requests_changes_nothing(monkeypatch):
    from mdmctl.evaluation import likelihood as lk

    m = _model("mdm")
    reqs = _requests(10)
    whole = _score(m, reqs, mc_samples=8, cfg=0.5, greedy=True)
    monkeypatch.setattr(lk, "CHUNK_REQUESTS", 3)
    chunked = _score(m, reqs, mc_samples=8, cfg=0.5, greedy=True)
    for a, b in zip(whole, chunked, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and a.is_greedy == b.is_greedy


def test_mc_dream_never_scores_the_canvas_s_last_position():
    """Dream's eval keeps a sequence's first and last positions clean: the continuation's last
    token never counts (and its first, with no context); the rest is ``mc``'s draws."""
    from mdmctl.evaluation import likelihood as lk

    cfg = ScoreConfig(estimator="mc-dream", mc_samples=64)
    dream, w = lk._mc_masks(cfg, 9, 4, 32)
    plain, w_mc = lk._mc_masks(ScoreConfig(estimator="mc", mc_samples=64), 9, 4, 32)
    assert not dream[:, -1].any() and torch.equal(dream[:, :-1], plain[:, :-1])
    assert torch.equal(w, w_mc) and plain[:, -1].any()
    bare, _ = lk._mc_masks(cfg, 9, 4, 32, bare=True)
    assert not bare[:, 0].any() and not bare[:, -1].any()
    m = _model("mdm")
    (one,) = _score(m, [([5, 6], [8])], estimator="mc-dream", mc_samples=16)
    assert one.logprob == 0.0  # a one-token continuation is never scored, as in Dream's eval
    (two,) = _score(m, [([5, 6], [8, 9])], estimator="mc-dream", mc_samples=16)
    assert two.logprob < 0
