"""The MDM decoding rules: blocks, remasking orders, threshold and factor parallel decoding,
top-k / top-p, eos rules; and an ARM refusing MDM-only options."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch

from mdmctl.config import ModelConfig
from mdmctl.errors import ConfigError
from mdmctl.model import Transformer
from mdmctl.sampling import SampleConfig
from mdmctl.sampling.mdm import Decoding, cfg_logits, parallel_reveal, sample_mdm, steps_per_block
from mdmctl.sampling.select import RowStreams, filter_logits, remask_score

MASK, PAD, EOS = 96, 95, 0
VARIANTS = {
    "plain": Decoding(),
    "blocks": Decoding(block_length=4),
    "random": Decoding(remasking="random", block_length=3),
    "margin": Decoding(remasking="margin"),
    "entropy": Decoding(remasking="entropy", block_length=5),
    "threshold": Decoding(threshold=0.05, block_length=4),
    "factor": Decoding(factor=1.0),
    "top-k-p": Decoding(temperature=1.0, top_k=5, top_p=0.8),
    "ancestral-blocks": Decoding(sampler="ancestral", block_length=4, temperature=1.0),
    "eos-rules": Decoding(min_length=3, eos_id=EOS, stop_at_eos=True),
    "cfg-blocks": Decoding(cfg=0.5, block_length=4),
    "suffix-window": Decoding(block_length=4, suffix_window=2, threshold=0.05),
    "suffix-window-cfg": Decoding(cfg=0.5, block_length=3, suffix_window=0),
}


@pytest.fixture(scope="module")
def mdm():
    torch.manual_seed(0)
    m = Transformer(ModelConfig.from_name("tiny", vocab_size=97, mask_id=MASK, seq_len=48)).eval()
    return lambda x, d: m(x, doc_ids=d)


def _run(model, prompts, dec, length=12, steps=6, seed=1, rows=None):
    """One stream for the batch, or with ``rows`` (each row's seed) a stream per row."""
    gen = torch.Generator().manual_seed(seed) if rows is None else RowStreams.seeded(rows, "cpu")
    return sample_mdm(model, prompts, length=length, steps=steps, mask_id=MASK, pad_id=PAD,
                      generator=gen, decoding=dec)  # fmt: skip


def _spy(model, seen):
    def f(x, d):
        seen.append(x.clone())
        return model(x, d)

    return f


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_fills_the_canvas_keeps_the_prompt_and_is_seeded(mdm, name):
    dec, seen = VARIANTS[name], []
    a = _run(_spy(mdm, seen), [[1, 2, 3], [4]], dec)
    b = _run(mdm, [[1, 2, 3], [4]], dec)
    assert a.tokens.shape == (2, 12) and not (a.tokens == MASK).any()
    assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe
    assert all(x[0, :3].tolist() == [1, 2, 3] and x[1, 0] == 4 for x in seen)


@pytest.mark.parametrize("name", VARIANTS)
def test_ragged_batch_equals_alone(mdm, name):
    """With a random stream per row (as ``generate`` samples), every sampler gives a row what it
    gets alone, sampling and random orders too."""
    alone = _run(mdm, [[7, 8]], VARIANTS[name], rows=[5]).tokens
    batch = _run(mdm, [[1, 2, 3, 4, 5, 6], [7, 8]], VARIANTS[name], rows=[9, 5]).tokens
    assert torch.equal(batch[1], alone[0])
    if VARIANTS[name].temperature == 0 and VARIANTS[name].remasking != "random":
        # deterministic decoding: one stream for the batch is as good
        assert torch.equal(_run(mdm, [[1, 2, 3, 4, 5, 6], [7, 8]], VARIANTS[name]).tokens, batch)


@pytest.mark.parametrize("name", VARIANTS)
def test_rows_of_different_lengths_and_steps_share_one_canvas(mdm, name):
    """Each row on its own schedule: the batch gives every row what it gets alone."""
    prompts, lengths, steps = [[1, 2, 3, 4, 5, 6], [7, 8], [9]], [5, 12, 9], [5, 6, 3]
    out = _run(mdm, prompts, VARIANTS[name], length=lengths, steps=steps, rows=[3, 4, 5])
    assert out.tokens.shape == (3, 12) and out.lengths == lengths
    for b, row in enumerate(out.rows()):
        alone = _run(mdm, [prompts[b]], VARIANTS[name], lengths[b], steps[b], rows=[3 + b])
        assert row == alone.tokens[0].tolist() and MASK not in row


def test_a_random_order_draws_from_the_batch_with_one_stream(mdm):
    """Why ``generate`` gives each row its own stream: with one stream for the batch, what a
    row draws depends on the rows before it (the reveal order of random remasking here)."""
    dec, seen = Decoding(remasking="random"), {}
    for prompts in ([[7, 8]], [[1, 2, 3], [7, 8]]):
        spy = []
        _run(_spy(mdm, spy), prompts, dec, length=8, steps=8)
        seen[len(prompts)] = [(x[-1] == MASK).tolist() for x in spy]
    assert seen[1] != seen[2]  # the row's canvas at each step: revealed in another order


def test_cached_modes_with_rows_of_different_lengths(tiny_mdm):
    from mdmctl.sampling.cache import CachedMDM

    dec = Decoding(block_length=4, threshold=0.05)
    prompts, lengths = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], [12, 6]
    for mode in ("prefix", "dual", "delayed"):
        cm = CachedMDM(tiny_mdm, mode, mask_id=MASK)
        out = _run(cm, prompts, dec, length=lengths, steps=lengths)
        for b, row in enumerate(out.rows()):
            alone = _run(CachedMDM(tiny_mdm, mode, mask_id=MASK), [prompts[b]], dec, lengths[b],
                         lengths[b])  # fmt: skip
            assert row == alone.tokens[0].tolist()


@pytest.mark.parametrize("sampler", ["confidence", "ancestral"])
def test_one_block_is_the_plain_sampler(mdm, sampler):
    """Token for token and forward for forward (the plain sampler was checked equal to mdmctl's
    earlier implementation on 144 settings when blocks were added: tokens and NFE)."""
    base = dict(sampler=sampler, temperature=1.0, cfg=0.3)
    if sampler == "confidence":  # one block defaults to SMDM's schedule, blocks to LLaDA's
        base["schedule"] = "smdm"
    plain = _run(mdm, [[1, 2], [3, 4, 5]], Decoding(**base), steps=5)
    for block in (12, 50):
        one = _run(mdm, [[1, 2], [3, 4, 5]], Decoding(**base, block_length=block), steps=5)
        assert torch.equal(one.tokens, plain.tokens) and one.nfe == plain.nfe


def test_blocks_are_decoded_left_to_right_on_their_own_schedule(mdm):
    seen = []
    _run(_spy(mdm, seen), [[1, 2]], Decoding(block_length=4), length=12, steps=6)
    gen = [x[0, 2:] for x in seen]
    # 3 blocks x 2 steps: 2 tokens revealed per step, block by block.
    assert [int((g == MASK).sum()) for g in gen] == [12, 10, 8, 6, 4, 2]
    for g in gen:
        open_blocks = [bool((g[i : i + 4] == MASK).any()) for i in (0, 4, 8)]
        assert open_blocks == sorted(open_blocks)  # a later block never ahead of an earlier one
    assert steps_per_block(10, 3) == [4, 3, 3] and steps_per_block(2, 4) == [1, 1, 1, 1]
    # An uneven split, 10 tokens in 4 steps, in one block and in blocks of 10 and 5 (each block
    # its own schedule: 5 in 2 steps): SMDM's 2,2,2,4; LLaDA's 3,3,2,2; rounded 2,3,3,2.
    for dec, want in [
        (Decoding(), [10, 8, 6, 4]),  # one block: SMDM's by default
        (Decoding(schedule="smdm"), [10, 8, 6, 4]),
        (Decoding(schedule="llada"), [10, 7, 4, 2]),
        (Decoding(schedule="rounded"), [10, 8, 5, 2]),
        (Decoding(block_length=10), [10, 7, 4, 2]),  # blocks: LLaDA's by default
        (Decoding(block_length=5), [10, 7, 5, 2]),  # LLaDA 3,2 per block
        (Decoding(block_length=5, schedule="smdm"), [10, 8, 5, 3]),  # SMDM 2,3 per block
        (Decoding(block_length=5, schedule="rounded"), [10, 7, 5, 2]),  # round(2.5) = 2 left
    ]:
        seen.clear()
        _run(_spy(mdm, seen), [[1, 2]], dec, length=10, steps=4)
        assert [int((x == MASK).sum()) for x in seen] == want, dec


@pytest.mark.parametrize("cfg", [0.0, 0.5])
def test_suffix_window_runs_the_block_and_the_window_after_it(mdm, cfg):
    """Each forward sees the prompt, the blocks so far and W masks after the block (DPad's
    sliding window), so block 1 decodes as a canvas of block + W positions would; a window
    past the canvas end is the exact sampler, token for token."""
    dec = Decoding(block_length=4, cfg=cfg)
    seen = []
    out = _run(_spy(mdm, seen), [[1, 2]], replace(dec, suffix_window=2), length=12, steps=6)
    assert not (out.tokens == MASK).any()
    assert [x.shape[1] for x in seen] == [8, 8, 12, 12, 14, 14]  # prompt 2 + block end + 2, cut
    short = _run(mdm, [[1, 2]], dec, length=6, steps=4)  # block 1: 4 slots, 2 steps, as above
    assert torch.equal(out.tokens[0, :4], short.tokens[0, :4])
    whole = _run(mdm, [[1, 2], [3, 4, 5]], dec, length=12, steps=6)
    far = _run(mdm, [[1, 2], [3, 4, 5]], replace(dec, suffix_window=12), length=12, steps=6)
    assert torch.equal(far.tokens, whole.tokens) and far.nfe == whole.nfe


@pytest.mark.parametrize("mode", ["prefix", "dual", "delayed"])
def test_suffix_window_with_caches_is_batch_invariant(tiny_mdm, mode):
    from mdmctl.sampling.cache import CachedMDM

    dec = Decoding(block_length=4, threshold=0.05, suffix_window=1)
    prompts, lengths = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], [12, 6]
    out = _run(CachedMDM(tiny_mdm, mode, mask_id=MASK), prompts, dec, lengths, lengths)
    assert not (out.tokens == MASK).any()
    for b, row in enumerate(out.rows()):
        alone = _run(CachedMDM(tiny_mdm, mode, mask_id=MASK), [prompts[b]], dec, lengths[b],
                     lengths[b])  # fmt: skip
        assert row == alone.tokens[0].tolist()


def test_threshold_one_reveals_one_token_per_step(mdm):
    seen = []
    out = _run(_spy(mdm, seen), [[1, 2]], Decoding(threshold=1.0), length=8, steps=2)
    assert out.nfe == 8 and [int((x == MASK).sum()) for x in seen] == list(range(8, 0, -1))
    low = _run(mdm, [[1, 2]], Decoding(threshold=0.0), length=8, steps=8)
    assert low.nfe == 1  # every token above 0: the whole canvas in one step


def test_factor_rule_reveals_the_leading_run_that_passes():
    # Probabilities in rank order 0.99, 0.8, 0.7, 0.2; factor 1: thresholds -, 0.667, 0.75, 0.8.
    prob = torch.tensor([[0.99, 0.8, 0.7, 0.2]])
    rank = torch.tensor([[0, 1, 2, 3]])
    got = parallel_reveal(prob, rank, torch.ones(1, 4, dtype=torch.bool), Decoding(factor=1.0))
    assert got.tolist() == [[True, True, False, False]]
    low = torch.tensor([[0.1, 0.05, 0.9, 0.9]])  # the first always goes; a failure stops the run
    got = parallel_reveal(low, rank, torch.ones(1, 4, dtype=torch.bool), Decoding(factor=1.0))
    assert got.tolist() == [[True, False, False, False]]


def _fast_dllm_count(conf: list[float], factor: float) -> int:
    """Fast-dLLM's ``get_transfer_index_dynamic`` for one row, restated: thresholds
    1 - factor / (n + 1) over the sorted confidences, the first always passing; stop at the first
    failure, and reveal one more when it is the last (or the loop ran out)."""
    conf = sorted(conf, reverse=True)
    thresholds = [-1] + [1 - factor / (n + 1) for n in range(2, len(conf) + 1)]
    for top in range(len(conf)):
        if conf[top] < thresholds[top]:
            break
    return top + 1 if top in (0, len(conf) - 1) else top


def test_factor_rule_as_fast_dllm_writes_it():
    """Only the last failing: Fast-dLLM reveals it too, the leading rule does not; on 600 random
    rows (1-8 masked of 10, 3 factors) the count is Fast-dLLM's, and leading's otherwise."""
    prob, rank = torch.tensor([[0.99, 0.9, 0.2]]), torch.tensor([[0, 1, 2]])
    masked = torch.ones(1, 3, dtype=torch.bool)
    fast = parallel_reveal(prob, rank, masked, Decoding(factor=1.0))
    lead = parallel_reveal(prob, rank, masked, Decoding(factor=1.0, factor_rule="leading"))
    assert fast.tolist() == [[True, True, True]] and lead.tolist() == [[True, True, False]]
    g = torch.Generator().manual_seed(0)
    for trial in range(600):
        n, factor = 1 + trial % 8, (0.5, 1.0, 2.0)[trial % 3]
        prob = torch.zeros(1, 10)
        pos = torch.randperm(10, generator=g)[:n]
        prob[0, pos] = 1 - torch.rand(n, generator=g) ** 3  # mostly confident
        masked = prob > 0
        score = torch.where(masked, prob, float("-inf"))
        rank = torch.empty(1, 10, dtype=torch.long)
        rank[0, score[0].argsort(descending=True, stable=True)] = torch.arange(10)
        got = parallel_reveal(prob, rank, masked, Decoding(factor=factor))
        want = _fast_dllm_count(prob[0, pos].tolist(), factor)
        assert int(got.sum()) == want and not bool((got & ~masked).any())


def test_remask_scores():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).log_softmax(-1)
    ids = torch.tensor([1, 0])
    g = torch.Generator().manual_seed(0)
    p = logits.exp()
    assert torch.allclose(remask_score(logits, ids, "low-confidence", g), p[[0, 1], ids])
    assert torch.allclose(remask_score(logits, ids, "margin", g), torch.stack(
        [p[0, 0] - p[0, 1], torch.tensor(0.0)]), atol=1e-6)  # fmt: skip
    ent = remask_score(logits, ids, "entropy", g)
    assert ent[1] == pytest.approx(-torch.log(torch.tensor(3.0)).item(), abs=1e-6)
    assert ent[0] > ent[1]  # the peaked position is the more certain
    r = remask_score(logits, ids, "random", g)
    assert ((0 <= r) & (r < 1)).all()


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, None)[0, 2:]).all()
    assert not torch.isinf(filter_logits(logits, 2, None)[0, :2]).any()
    # softmax = 0.644, 0.237, 0.087, 0.032: top-p 0.8 keeps the first two, 0.5 only the first.
    assert torch.isinf(filter_logits(logits, None, 0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, None, 0.5)).tolist() == [[False, True, True, True]]
    assert torch.equal(filter_logits(logits, None, 1.0), logits)


def _eos_model(first_eos: int):
    """A stand-in MDM: position p prefers token 10 + p, and eos from ``first_eos`` on (the
    earliest eos the most confident), less sure of eos than of the tokens before it."""

    def f(x, d):
        B, L = x.shape
        logits = torch.zeros(B, L, 97)
        pos = torch.arange(L)
        logits[:, pos, (10 + pos).clamp(max=90)] = 9.0
        logits[:, first_eos:, (10 + pos[first_eos:]).clamp(max=90)] = 5.0
        logits[:, first_eos:, EOS] = 8.0 - 0.1 * pos[first_eos:]
        logits[..., MASK] = float("-inf")
        return logits

    return f


def test_eos_rules():
    model = _eos_model(first_eos=4)  # canvas positions: prompt [1], then 12 generated
    full = _run(model, [[1]], Decoding(eos_id=EOS), length=12, steps=12)
    early = _run(model, [[1]], Decoding(eos_id=EOS, stop_at_eos=True), length=12, steps=12)
    assert early.nfe < full.nfe
    cut = full.tokens[0].tolist().index(EOS)
    assert early.tokens[0].tolist()[: cut + 1] == full.tokens[0].tolist()[: cut + 1]
    assert set(early.tokens[0].tolist()[cut:]) == {EOS}
    late = _run(model, [[1]], Decoding(eos_id=EOS, min_length=6), length=12, steps=12)
    assert EOS not in late.tokens[0, :6].tolist() and EOS in late.tokens[0, 6:].tolist()


def test_finished_rows_leave_the_batch():
    model, seen = _eos_model(first_eos=4), []

    def spy(x, d):
        seen.append(x.shape[0])
        return model(x, d)

    # Row 1 starts generating past position 4: its first reveal is eos, and it is done.
    prompts, dec = [[1], [1, 2, 3, 4, 5, 6, 7]], Decoding(eos_id=EOS, stop_at_eos=True)
    out = _run(spy, prompts, dec, length=12, steps=12)
    assert seen[0] == 2 and seen[1:] == [1] * (len(seen) - 1) and len(seen) > 1
    for b, p in enumerate(prompts):
        assert (
            out.tokens[b].tolist() == _run(model, [p], dec, length=12, steps=12).tokens[0].tolist()
        )
    seen.clear()  # sampling: the batch stays whole, so every row draws what it drew before
    _run(spy, prompts, Decoding(eos_id=EOS, stop_at_eos=True, temperature=1.0), length=12, steps=12)
    assert set(seen) == {2}
    seen.clear()  # keep_batch (CUDA graphs): whole too, with the same output and forwards
    kept = _run(spy, prompts, Decoding(eos_id=EOS, stop_at_eos=True, keep_batch=True), 12, 12)
    assert set(seen) == {2} and kept.nfe == out.nfe
    assert torch.equal(kept.tokens, out.tokens)
    seen.clear()  # a stream per row: sampled rows leave the batch too, drawing what they drew
    hot = Decoding(eos_id=EOS, stop_at_eos=True, temperature=1.0)
    left = _run(spy, prompts, hot, 12, 12, rows=[1, 2])
    assert seen[0] == 2 and seen[-1] == 1
    stay = _run(model, prompts, replace(hot, keep_batch=True), 12, 12, rows=[1, 2])
    assert torch.equal(left.tokens, stay.tokens)


def _check_eos_rules(free, stop, late, eos: int, min_length: int) -> None:
    """``stop`` (stop_at_eos) is ``free`` up to each row's first eos (what ``generate`` returns;
    its masks after it are filled with eos); ``late`` (min_length) has no eos before it."""
    assert stop.nfe <= free.nfe
    for f, o in zip(free.rows(), stop.rows(), strict=True):
        cut = f.index(eos) if eos in f else len(f)
        assert o[: cut + 1] == f[: cut + 1]
    assert all(eos not in r[:min_length] for r in late.rows())
    assert MASK not in stop.tokens and MASK not in late.tokens


@pytest.mark.parametrize("name", VARIANTS)
def test_eos_rules_hold_for_every_sampler(name):
    """Every variant, on a stand-in model that prefers eos from position 4 on: a row stops at
    its first eos without changing a token before it, and min_length holds eos back."""
    model, prompts = _eos_model(first_eos=4), [[1], [1, 2, 3]]
    dec = replace(VARIANTS[name], eos_id=EOS, stop_at_eos=False, min_length=0)
    free = _run(model, prompts, dec, 12, 12, rows=[1, 2])
    assert EOS in free.tokens[0, :6].tolist()  # both rules are exercised
    stop = _run(model, prompts, replace(dec, stop_at_eos=True), 12, 12, rows=[1, 2])
    late = _run(model, prompts, replace(dec, min_length=6), 12, 12, rows=[1, 2])
    _check_eos_rules(free, stop, late, EOS, 6)


@pytest.mark.parametrize("mode", ["prefix", "dual", "delayed"])
def test_eos_rules_hold_with_caches(tiny_mdm, mode):
    """A real model with a KV cache: call eos a token it reveals early, and the rules hold (the
    finished row's cache rows leave with it)."""
    from mdmctl.sampling.cache import CachedMDM

    prompts, dec = [[1, 2, 3], [4, 5, 6, 7, 8]], Decoding(block_length=4, threshold=0.05)

    def run(d):
        return _run(CachedMDM(tiny_mdm, mode, mask_id=MASK), prompts, d, 12, 12)

    eos = run(dec).tokens[0, 5].item()
    free = run(replace(dec, eos_id=eos))
    stop, late = (
        run(replace(dec, eos_id=eos, stop_at_eos=True)),
        run(replace(dec, eos_id=eos, min_length=6)),
    )
    assert eos in free.tokens[0, :6].tolist()
    _check_eos_rules(free, stop, late, eos, 6)
    for b, p in enumerate(prompts):  # and a stopped row is what it is alone
        alone = _run(
            CachedMDM(tiny_mdm, mode, mask_id=MASK),
            [p],
            replace(dec, eos_id=eos, stop_at_eos=True),
            12,
            12,
        )
        assert stop.rows()[b] == alone.rows()[0]


@pytest.mark.parametrize("cfg", [0.0, 0.5])  # CFG: the cache holds the unconditional rows too
@pytest.mark.parametrize("mode", ["dual", "delayed"])
def test_cache_take_keeps_the_rows_it_is_given(tiny_mdm, cfg, mode):
    from mdmctl.sampling.cache import CachedMDM

    x = torch.tensor([[1, 2, 3, 9, MASK, MASK, MASK, MASK], [4, 7, MASK, MASK, MASK, MASK, 5, 6]])
    own = torch.zeros_like(x, dtype=torch.bool)
    own[0, 4:6], own[1, 2:4] = True, True
    prompt = torch.arange(8).expand(2, 8) < 2  # (B, L)
    cm = CachedMDM(tiny_mdm, mode, mask_id=MASK)
    cm.begin_block(own)
    cfg_logits(cm, x, None, prompt, MASK, cfg)  # the refresh
    both = cfg_logits(cm, x, None, prompt, MASK, cfg)  # a window
    cm.take(torch.tensor([False, True]))
    one = cfg_logits(cm, x[1:], None, prompt[1:], MASK, cfg)
    torch.testing.assert_close(one[0, 2:4], both[1, 2:4])


@pytest.mark.parametrize("mode", ["dual", "delayed"])
def test_cache_refills_when_the_unconditional_pass_stops(tiny_mdm, mode):
    """Under CFG the cache holds 2B rows; once only rows without a prompt remain, the guided
    pass is one plain pass of B rows: the cache is refilled for them instead of failing."""
    from mdmctl.sampling.cache import CachedMDM

    x = torch.tensor([[1, 2, MASK, MASK, MASK, MASK], [MASK, MASK, MASK, MASK, MASK, MASK]])
    prompt = torch.tensor([[True, True, False, False, False, False], [False] * 6])
    cm = CachedMDM(tiny_mdm, mode, mask_id=MASK)
    cm.begin_block(x == MASK)
    cfg_logits(cm, x, None, prompt, MASK, 0.5)  # the refresh, 2B rows
    cm.take(torch.tensor([False, True]))  # the row with a prompt has finished
    alone = cfg_logits(cm, x[1:], None, prompt[1:], MASK, 0.5)  # B = 1 rows: a refill
    assert cm.forwards_full == 2
    torch.testing.assert_close(alone, tiny_mdm(x[1:]), atol=1e-5, rtol=1e-5)


def test_sample_config_rules():
    for kw, match in [
        (dict(remasking="lowest"), "--remasking"),
        (dict(threshold=1.5), "--threshold"),
        (dict(threshold=0.9, factor=1.0), "pass one"),
        (dict(top_p=0.0), "--top-p"),
        (dict(block_length=0), "--block-length"),
        (dict(sampler="ancestral", threshold=0.9), "ancestral"),
        (dict(cache="prefix", cache_window=4), "--cache-window applies to --cache dual"),
        (dict(cache="dual", cache_window=-1), "--cache-window: must be >= 0"),
        (dict(cache="delayed", cache_window=2), "--cache-window applies to --cache dual"),
        (dict(cache="decoded"), "--cache: expected one of none, prefix, dual, delayed"),
        (dict(block_length=4, suffix_window=-1), "--suffix-window: must be >= 0"),
        (dict(suffix_window=4), "--suffix-window needs --block-length"),
    ]:
        with pytest.raises(ConfigError, match=match):
            SampleConfig.create(**kw)


def test_cli_decoding_options_and_arm_refusal(ckpts):
    from .conftest import run

    run("sample", "--checkpoint", ckpts["mdm"], "--length", "6", "--block-length", "2",
        "--threshold", "0.5", "--remasking", "margin", "--top-k", "8", "--min-length", "2",
        "--cache", "dual", "--cache-window", "2", "--suffix-window", "1",
        "--device", "cpu")  # fmt: skip
    run("sample", "--checkpoint", ckpts["mdm"], "--length", "6", "--threshold", "0.5",
        "--cache", "delayed", "--cfg", "0.5", "--device", "cpu")  # fmt: skip
    run("sample", "--checkpoint", ckpts["arm"], "--length", "6", "--top-p", "0.9", "--min-length",
        "2", "--device", "cpu")  # fmt: skip
    r = run("sample", "--checkpoint", ckpts["arm"], "--length", "6", "--block-length", "2",
            "--factor", "1", "--suffix-window", "0", "--device", "cpu", code=2)  # fmt: skip
    assert (
        "--block-length, --factor, --suffix-window apply to objective 'mdm'" in r.stdout + r.stderr
    )
    r = run("sample", "--checkpoint", ckpts["arm"], "--length", "6", "--cache", "dual",
            "--cache-window", "2", "--device", "cpu", code=2)  # fmt: skip
    assert "--cache, --cache-window apply to objective 'mdm'" in r.stdout + r.stderr
    run("sample", "--checkpoint", ckpts["mdm"], "--threshold", "0.5", "--factor", "1", code=2)


# --- KV caches --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_mdm():
    torch.manual_seed(0)
    return Transformer(
        ModelConfig.from_name("tiny", vocab_size=97, mask_id=MASK, seq_len=48)
    ).eval()


@pytest.mark.parametrize("dec", [Decoding(block_length=4), Decoding(block_length=4, cfg=0.5)])
def test_cache_none_is_exact(tiny_mdm, dec):
    from mdmctl.sampling.cache import CachedMDM

    plain = _run(lambda x, d: tiny_mdm(x, doc_ids=d), [[1, 2, 3], [4]], dec)
    none = _run(CachedMDM(tiny_mdm, "none"), [[1, 2, 3], [4]], dec)
    assert torch.equal(none.tokens, plain.tokens) and none.nfe == plain.nfe


WINDOWS = {  # (mode, dual window): each row's positions run fresh after the refresh
    ("prefix", 0): [[2, 3, 4, 5, 6, 7]] * 2,  # its block and what follows, as wide as the widest
    ("dual", 0): [[4, 5], [2, 3]],  # its block
    ("dual", 1): [[4, 5, 6], [2, 3, 4]],  # its block and the next position
    ("dual", 99): [[2, 3, 4, 5, 6, 7]] * 2,  # a window past the canvas end: the prefix cache
}


@pytest.mark.parametrize(("mode", "near"), list(WINDOWS))
def test_cached_window_right_after_a_refresh_equals_the_full_forward(tiny_mdm, mode, near):
    """Nothing changed since the refresh: the cached keys and values are exact, so the window's
    logits equal a full forward's (ragged rows, padding as its own segment)."""
    from mdmctl.sampling.cache import CachedMDM

    x = torch.tensor(
        [[1, 2, 3, 9, MASK, MASK, MASK, MASK], [4, 7, MASK, MASK, MASK, MASK, PAD, PAD]]
    )
    docs = (x == PAD).long()
    own = torch.zeros_like(x, dtype=torch.bool)
    own[0, 4:6], own[1, 2:4] = True, True
    cm = CachedMDM(tiny_mdm, mode, near)
    cm.begin_block(own)
    full = cm(x, docs).clone()  # the cache updates its logits buffer in place
    window = cm(x, docs)
    pos = cm.positions
    assert (cm.forwards_full, cm.forwards_window) == (1, 1)
    assert pos.tolist() == WINDOWS[mode, near]
    # Each row writes its window's columns from its block on, not those its window was shifted
    # left over to fit the widest row.
    written = [[c for c in p if c >= start] for p, start in zip(pos.tolist(), (4, 2), strict=True)]
    assert [[c for c in range(8) if cm.own[r, c]] for r in range(2)] == written
    at = pos[:, :, None].expand(-1, -1, full.shape[-1])
    assert not torch.equal(window.gather(1, at), torch.zeros_like(window.gather(1, at)))
    torch.testing.assert_close(window.gather(1, at), full.gather(1, at), atol=1e-5, rtol=1e-5)
    cm.logits.zero_()  # the window's logits come from the window's forward, not the buffer
    torch.testing.assert_close(cm(x, docs).gather(1, at), full.gather(1, at), atol=1e-5, rtol=1e-5)


def test_dual_cache_window_between_dual_and_prefix(tiny_mdm):
    """A window as long as the canvas is the prefix cache, token for token and forward for
    forward; a window of 2 recomputes more than the dual cache, so its answers may differ from
    both, and it still fills the canvas with each row as it is alone."""
    from mdmctl.sampling.cache import CachedMDM

    dec = Decoding(block_length=4, threshold=0.05)
    prompts, lengths = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], [12, 6]
    runs = {}
    for mode, window in [("prefix", 0), ("dual", 64), ("dual", 2)]:
        cm = CachedMDM(tiny_mdm, mode, window)
        out = _run(cm, prompts, dec, length=lengths, steps=lengths)
        runs[mode, window] = (out.tokens, out.nfe, cm.forwards_full, cm.forwards_window)
        for b, row in enumerate(out.rows()):
            alone = _run(
                CachedMDM(tiny_mdm, mode, window), [prompts[b]], dec, lengths[b], lengths[b]
            )
            assert row == alone.tokens[0].tolist() and MASK not in row
    prefix, wide = runs["prefix", 0], runs["dual", 64]
    assert torch.equal(prefix[0], wide[0]) and prefix[1:] == wide[1:]
    own = torch.zeros(1, 12, dtype=torch.bool)
    own[0, 3:7] = True  # a block of 4: window 2 runs 6 columns, the plain dual cache 4
    widths = []
    for near in (0, 2):
        cm = CachedMDM(tiny_mdm, "dual", near)
        cm.begin_block(own)
        widths.append(cm.positions.shape[1])
    assert widths == [4, 6]


@pytest.mark.parametrize(
    ("mode", "near"), [("prefix", 0), ("dual", 0), ("dual", 2), ("delayed", 0)]
)
def test_cached_modes_fill_the_canvas_and_are_batch_invariant(tiny_mdm, mode, near):
    from mdmctl.sampling.cache import CachedMDM

    dec = Decoding(block_length=4, cfg=0.5)  # CFG: the cache holds 2B rows
    cm = CachedMDM(tiny_mdm, mode, near, MASK)
    out = _run(cm, [[1, 2, 3, 4, 5, 6], [7, 8]], dec, length=12, steps=12)
    assert not (out.tokens == MASK).any() and out.nfe == 12
    assert cm.forwards_full == 3 and cm.forwards_window == 9  # one refresh per block
    alone = _run(CachedMDM(tiny_mdm, mode, near, MASK), [[7, 8]], dec, length=12, steps=12)
    assert torch.equal(out.tokens[1], alone.tokens[0])


def test_delayed_cache_runs_the_columns_masked_at_the_previous_forward(tiny_mdm):
    """Right after the refresh nothing changed, so the kept keys and values are exact and the
    masked columns' logits equal a full forward's; once a token is revealed it runs one more
    forward (its keys and values now computed with it) and then only the masked columns run."""
    from mdmctl.sampling.cache import CachedMDM

    x = torch.tensor(
        [[1, 2, 3, 9, MASK, MASK, MASK, MASK], [4, 7, MASK, MASK, MASK, MASK, PAD, PAD]]
    )
    docs = (x == PAD).long()
    cm = CachedMDM(tiny_mdm, "delayed", mask_id=MASK)
    cm.begin_block(x == MASK)
    full = cm(x, docs).clone()  # the refresh
    masked = (x == MASK)[:, :, None].expand_as(full)
    assert cm.positions.tolist() == [[4, 5, 6, 7], [2, 3, 4, 5]]
    torch.testing.assert_close(cm(x, docs)[masked], full[masked], atol=1e-5, rtol=1e-5)
    y = x.clone()
    y[0, 4], y[1, 2:4] = 11, 12  # revealed: they run once more with their tokens
    cm(y, docs)
    assert cm.forwards_full == 1 and cm.forwards_window == 2
    # Row 0 has 3 masked columns, row 1 two: row 1 fills the width with a column it does not write.
    assert cm.positions[:, :2].tolist() == [[5, 6], [4, 5]] and cm.positions[0, 2] == 7
    assert cm.own.tolist() == (y == MASK).tolist()
    with pytest.raises(ValueError, match="needs mask_id"):
        CachedMDM(tiny_mdm, "delayed")


def test_delayed_cache_widths_in_steps_sample_the_same(tiny_mdm):
    """Widths rounded up to a multiple (for CUDA graphs) only add columns that write nothing."""
    from mdmctl.sampling.cache import CachedMDM

    dec, widths = Decoding(threshold=0.3, cfg=0.5), []
    prompts, lengths = [[1, 2, 3, 4, 5, 6], [7, 8]], [12, 16]
    plain = _run(CachedMDM(tiny_mdm, "delayed", mask_id=MASK), prompts, dec, lengths, lengths)
    stepped = CachedMDM(tiny_mdm, "delayed", mask_id=MASK, width_multiple=8)
    hook = tiny_mdm.register_forward_hook(lambda m, args, out: widths.append(args[0].shape[1]))
    try:
        out = _run(stepped, prompts, dec, length=lengths, steps=lengths)
    finally:
        hook.remove()
    assert torch.equal(out.tokens, plain.tokens)
    assert set(widths[1:]) <= {8, 16, 18} and 8 in widths  # 18: the canvas


def test_bench_sample_runs_every_setting(ckpts):
    from mdmctl.bench import MDM_SETTINGS, bench_sample

    from .conftest import SHARED

    data = SHARED / "reversal_curse"
    if not data.is_dir():
        pytest.skip(f"{data} is absent (the reversal-curse files)")
    rows = bench_sample(mdm=str(ckpts["mdm"]), arm=str(ckpts["arm"]), data_dir=str(data),
                        batch_size=4, latency_prompts=2, limit=3, repeats=2, compile=False,
                        device="cpu")  # fmt: skip
    assert [r.setting for r in rows] == [*MDM_SETTINGS, "ARM, KV cache"]
    naive = rows[0]  # SMDM's schedule at steps = length: nothing at the first step, 2 at the last
    assert naive.agreement == 1.0 and naive.speedup == 1.0 and naive.nfe_per_prompt >= 7
    assert all(r.prompts_per_s > 0 and 0 <= r.accuracy <= 1 for r in rows)
    assert rows[1].agreement == 1.0  # the eos stop changes no returned token
    assert (naive.delta, naive.delta_stderr) == (0.0, 0.0)
    assert rows[1].delta == 0.0 and all(-1 <= r.delta <= 1 for r in rows)
    arm = rows[-1]  # every row is also compared with the ARM
    assert (arm.vs_arm, arm.arm_tokens_ratio, arm.arm_latency_tokens_ratio) == (0.0, 1.0, 1.0)
    assert all(r.latency_tokens_per_s > 0 and r.vs_arm is not None for r in rows)
    assert naive.arm_tokens_ratio == pytest.approx(naive.tokens_per_s / arm.tokens_per_s)
    assert len({r.hardware for r in rows}) == 1 and "torch" in rows[0].hardware
    for r in rows:  # two files of 3 prompts each: the overall accuracy is their mean
        assert list(r.accuracy_by_file) == ["p2d_same", "d2p_same"]
        assert sum(r.accuracy_by_file.values()) / 2 == pytest.approx(r.accuracy)


def test_bench_sample_runs_given_settings_after_the_naive_sampler(ckpts):
    """``settings`` replaces the default list (benchmarks/cache_window_grid.py) and ``splits``
    the prompt files; the naive sampler still runs first, since every ratio is to it, and no ARM
    means no ARM columns."""
    from mdmctl.bench import NAIVE, bench_sample

    from .conftest import SHARED

    data = SHARED / "reversal_curse"
    if not data.is_dir():
        pytest.skip(f"{data} is absent (the reversal-curse files)")
    window = {"block_length": 4, "threshold": 0.9, "cache": "dual", "cache_window": 2}
    rows = bench_sample(mdm=str(ckpts["mdm"]), arm=None, data_dir=str(data), batch_size=4,
                        latency_prompts=1, limit=2, compile=False, device="cpu",
                        settings={"window 2": window},
                        splits={"both": "both_prompts_test.jsonl"})  # fmt: skip
    assert [r.setting for r in rows] == [NAIVE, "window 2"]
    assert rows[0].agreement == 1.0 and rows[1].vs_arm is None
    assert all(list(r.accuracy_by_file) == ["both"] for r in rows)


def test_bench_sample_refuses_an_mdm_as_the_arm(ckpts, tmp_path):
    """--arm naming the --mdm checkpoint is caught too (it is loaded once, for both)."""
    from mdmctl.bench import bench_sample
    from mdmctl.errors import ConfigError

    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "completion": " b"}\n')
    with pytest.raises(ConfigError, match="an MDM checkpoint, expected an ARM"):
        bench_sample(mdm=str(ckpts["mdm"]), arm=str(ckpts["mdm"]), data_dir=str(tmp_path),
                     splits={"p": "p.jsonl"}, compile=False, device="cpu")  # fmt: skip


def test_bench_sample_cli_prints_the_table_and_the_targets(ckpts):
    from .conftest import SHARED, run

    data = SHARED / "reversal_curse"
    if not data.is_dir():
        pytest.skip(f"{data} is absent (the reversal-curse files)")
    args = ["bench", "sample", "--mdm", ckpts["mdm"], "--arm", ckpts["arm"], "--data-dir", data,
            "--limit", "2", "--batch-size", "2", "--latency-prompts", "1", "--no-compile",
            "--device", "cpu"]  # fmt: skip
    out = run(*args).stdout
    assert "accuracy (p2d_same / d2p_same)" in out and "ARM, KV cache" in out
    assert "below the naive sampler's accuracy" in out and "the ARM's accuracy" in out
    # Other files: split names and a file of the folder, labelled by its stem
    files = ["--split", "d2p_same", "--split", "both_prompts_test.jsonl"]
    rows = json.loads(run(*args, *files, "--json").stdout)
    assert [r["setting"] for r in rows][-1] == "ARM, KV cache" and rows[-1]["vs_arm"] == 0.0
    assert all(list(r["accuracy_by_file"]) == ["d2p_same", "both_prompts_test"] for r in rows)
    bad = run(*args, "--split", "p2d", code=2)
    assert "--split: expected names from p2d_same" in bad.stdout + bad.stderr
    bad = run(*args, "--split", "p2d_same", "--split", "p2d_same.jsonl", code=2)
    assert "--split: two files labelled p2d_same" in bad.stdout + bad.stderr
    wrong = run(*args[:2], "--mdm", ckpts["arm"], *args[4:], code=2)  # an ARM passed as --mdm
    assert "an ARM checkpoint, expected an MDM" in wrong.stdout + wrong.stderr


def _arith_problems():
    """benchmarks/arith_problems.py, imported from its file (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "arith_problems.py"
    spec = importlib.util.spec_from_file_location("arith_problems", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arith_problems_are_right_held_out_and_seeded(tmp_path):
    import re

    arith = _arith_problems()
    arith.write(tmp_path / "a", 300, 40, seed=1)
    arith.write(tmp_path / "b", 300, 40, seed=1)

    def read(folder: str, file: str) -> list[dict]:
        return [json.loads(x) for x in (tmp_path / folder / file).read_text().splitlines()]

    train, test = read("a", "train.jsonl"), read("a", "test.jsonl")
    assert (len(train), len(test)) == (300, 40) and read("b", "test.jsonl") == test
    assert not {r["prompt"] for r in test} & {r["prompt"] for r in train}
    arith.write(tmp_path / "c", 300, 40, seed=1, digits=2)
    two = read("c", "train.jsonl") + read("c", "test.jsonl")
    for r in train + test + two:  # the equation uses the question's numbers, its result is right
        a, op, b, c, answer = re.fullmatch(r" <<(\d+)([+*])(\d+)=(\d+)>> #### (\d+)",
                                           r["completion"]).groups()  # fmt: skip
        assert re.findall(r"\d+", r["prompt"]) == [a, b]
        assert int(c) == int(answer) == (int(a) + int(b) if op == "+" else int(a) * int(b))
    assert {r["completion"][4] for r in train} == {"+", "*"}  # both operations
    assert all(len(x) == 1 for r in train + test for x in re.findall(r"\d+", r["prompt"]))
    sums = [r for r in two if "+" in r["completion"]]  # two-digit operands, a carry among them
    assert all(len(x) == 2 for r in sums for x in re.findall(r"\d+", r["prompt"]))
    assert any(int(r["completion"].split()[-1]) >= 100 for r in sums)
    text = [r["text"] for r in read("a", "text.jsonl")]  # the tokenizer's corpus
    assert text == [r["prompt"] + r["completion"] for r in train]


def test_bench_sample_cli_on_files_of_any_folder(ckpts, tmp_path):
    """benchmarks/arith_pair.sh's call: generated prompt files, no shared data needed."""
    from .conftest import run

    _arith_problems().write(tmp_path, 10, 3, seed=0)
    out = run("bench", "sample", "--mdm", ckpts["mdm"], "--arm", ckpts["arm"], "--data-dir",
              tmp_path, "--split", "test.jsonl", "--batch-size", "2", "--latency-prompts", "1",
              "--no-compile", "--device", "cpu").stdout  # fmt: skip
    assert "sampling on test (batch 2)" in out and "accuracy (test)" in out
    assert "ARM, KV cache" in out and "the ARM's accuracy" in out
    assert "CPUs usable, " in out and "threads, torch 2." in out  # the hardware


def test_bench_prompt_files_are_checked(tmp_path):
    from mdmctl.bench import read_prompts
    from mdmctl.errors import DataError

    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    for file, match in [("empty.jsonl", "empty.jsonl: no prompts"),
                        ("bad.jsonl", "bad.jsonl:2: expected string fields prompt, completion"),
                        ("none.jsonl", "none.jsonl: not found")]:  # fmt: skip
        with pytest.raises(DataError, match=match):
            read_prompts(tmp_path, None, {"x": file})


def _row(setting, objective, tokens_per_s, delta, vs_arm=None, b1=1.0):
    from mdmctl.bench import BenchRow

    return BenchRow(setting, objective, prompts_per_s=1.0, tokens_per_s=tokens_per_s,
                    nfe_per_prompt=1.0, latency_s=1.0, latency_tokens_per_s=b1, accuracy=0.5,
                    stderr=0.0, agreement=None, delta=delta, vs_arm=vs_arm, vs_arm_stderr=0.01,
                    arm_tokens_ratio=tokens_per_s / 100, arm_latency_tokens_ratio=b1)  # fmt: skip


def test_bench_targets_pick_the_fastest_setting_within_a_point():
    from mdmctl.bench import targets

    rows = [
        _row("naive", "mdm", 10, 0.0, -0.05, b1=0.5),
        _row("fast", "mdm", 80, -0.02, -0.07),
        _row("ok", "mdm", 50, -0.005, -0.008, b1=1.5),
        _row("arm", "arm", 100, 0.2, 0.0),
        _row("arm, compiled", "arm", 125, 0.2, 0.0, b1=0.75),
    ]
    naive_line, big, one = targets(rows)
    assert "ok, 5.00x its tokens/s" in naive_line  # "fast" loses 2 points: not equal quality
    # Each against the fastest ARM row at that batch size
    assert "large batch: ok, 0.40x the tokens/s of arm, compiled" in big
    assert "batch 1: ok, 1.50x the tokens/s of arm (" in one
    rows[2].vs_arm = -0.03
    assert "within 1 point of the ARM's accuracy (closest: ok, -0.030" in targets(rows)[1]
    no_arm = targets([_row("naive", "mdm", 10, 0.0), _row("ok", "mdm", 50, -0.005)])
    assert len(no_arm) == 1 and "ok, 5.00x" in no_arm[0]


def test_paired_difference():
    from mdmctl.evaluation.generation import paired_difference

    # Differences 0, 1, 0, 0: mean 0.25, sample variance 0.25, s.e. sqrt(0.25 / 4).
    assert paired_difference([1, 1, 0, 0], [1, 0, 0, 0]) == (0.25, 0.25)
    assert paired_difference([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)


def test_steps_fewer_than_blocks_is_an_error(mdm):
    with pytest.raises(ConfigError, match="fewer than the 3 blocks"):
        _run(mdm, [[1]], Decoding(block_length=4), length=12, steps=2)
    assert not (
        _run(mdm, [[1]], Decoding(block_length=4, threshold=0.5), steps=1).tokens == MASK
    ).any()


# --- torch.compile ----------------------------------------------------------------------------


@pytest.mark.slow  # torch.compile of two tiny models: about 40 s on 2 cores
def test_compiled_model_samples_what_the_eager_model_samples(tiny_mdm, caplog):
    """Dual-cache block decoding (full and window forwards, rows leaving), the delayed cache
    and ragged ARM batches: the compiled model's tokens at temperature 0 are the eager model's,
    and the graphs of both models (and of uniform ARM batches) fit dynamo's recompile limit."""

    from mdmctl.sampling import compile_model
    from mdmctl.sampling.arm import sample_arm
    from mdmctl.sampling.cache import CachedMDM

    dec = Decoding(block_length=4, threshold=0.5, temperature=0.0, eos_id=5)
    prompts = [[1, 2, 3, 4, 6, 7], [7, 8], [9, 10, 11]]
    net = compile_model(tiny_mdm, "cpu")
    with torch.no_grad():
        eager = _run(CachedMDM(tiny_mdm, "dual"), prompts, dec, length=12, steps=12)
        comp = _run(CachedMDM(net, "dual"), prompts, dec, length=12, steps=12)
    assert torch.equal(comp.tokens, eager.tokens) and comp.nfe == eager.nfe
    arm = Transformer(ModelConfig.from_name("tiny", objective="arm", vocab_size=97, seq_len=48))
    kw = dict(length=[6, 9, 4], eos_id=5, generator=torch.Generator(), temperature=0.0)
    eager_arm = sample_arm(arm.eval(), prompts, **kw)
    logging.getLogger("torch._dynamo").addHandler(caplog.handler)
    try:
        # The delayed cache: a window of another width at most steps, one block
        one = Decoding(threshold=0.5, temperature=0.0, eos_id=5)
        with torch.no_grad():
            eager = _run(CachedMDM(tiny_mdm, "delayed", mask_id=MASK), prompts, one, 12, 12)
            comp = _run(CachedMDM(net, "delayed", mask_id=MASK), prompts, one, 12, 12)
        assert torch.equal(comp.tokens, eager.tokens) and comp.nfe == eager.nfe
        assert sample_arm(compile_model(arm, "cpu"), prompts, **kw) == eager_arm
        same = [[1, 2], [3, 4]]  # equal prompt lengths: no padding, another graph
        assert sample_arm(compile_model(arm, "cpu"), same, **kw | {"length": 3}) == sample_arm(
            arm, same, **kw | {"length": 3}
        )
    finally:
        logging.getLogger("torch._dynamo").removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage()]


def test_compile_that_cannot_run_is_a_config_error(monkeypatch):
    import mdmctl.sampling.compiled as sampling

    def broken(*a, **k):
        raise RuntimeError("Compiler: cc is not found\nmore")

    monkeypatch.setattr(sampling, "_COMPILE_ERRORS", {})
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(ConfigError, match="--compile: torch.compile cannot run on cpu: "
                       "RuntimeError: Compiler: cc is not found$"):  # fmt: skip
        sampling.compile_model(torch.nn.Linear(2, 2), "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_sampling_on_cuda_matches_eager():
    """The same check on CUDA (Triton kernels): dual-cache MDM and ragged ARM batches."""
    from mdmctl.sampling import compile_model
    from mdmctl.sampling.arm import sample_arm
    from mdmctl.sampling.cache import CachedMDM

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", vocab_size=97, mask_id=MASK, seq_len=48)
    mdm = Transformer(cfg).cuda().eval()
    dec = Decoding(block_length=4, threshold=0.5, temperature=0.0, eos_id=5)
    prompts = [[1, 2, 3, 4, 6, 7], [7, 8], [9, 10, 11]]
    kw = dict(length=12, steps=12, mask_id=MASK, pad_id=PAD, decoding=dec, device="cuda")
    with torch.no_grad():
        runs = [
            sample_mdm(CachedMDM(m, "dual"), prompts, generator=torch.Generator(), **kw).tokens
            for m in (mdm, compile_model(mdm, "cuda"))
        ]
    assert torch.equal(*runs)
    arm = Transformer(ModelConfig.from_name("tiny", objective="arm", vocab_size=97, seq_len=48))
    arm = arm.cuda().eval()
    akw = dict(length=[6, 9, 4], eos_id=5, generator=torch.Generator(), device="cuda")
    assert sample_arm(compile_model(arm, "cuda"), prompts, **akw) == sample_arm(arm, prompts, **akw)


# --- CUDA graphs (sampling/graphs.py) ----------------------------------------------------------


class _NoHostSync(torch.utils._python_dispatch.TorchDispatchMode):
    """Fails on operations that wait for the device to tell the host a value (``.item()``,
    ``.tolist()``, data-dependent shapes) or copy host data to it (``torch.tensor(list)``, a
    pageable copy on CUDA): a CUDA graph cannot record them."""

    SYNCS = ("_local_scalar_dense", "nonzero", "masked_select", "unique")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        assert name not in self.SYNCS, f"{func} syncs with the host"
        # A 0-d tensor from a Python number (``x[...] = float("-inf")``) is a kernel argument.
        assert name != "lift_fresh" or args[0].dim() == 0, f"{func} copies host data"
        if name.startswith("index"):  # a boolean index is a nonzero on CUDA
            flat = [t for a in args if isinstance(a, (list, tuple)) for t in a]
            assert not any(getattr(t, "dtype", None) == torch.bool for t in flat), func
        return func(*args, **(kwargs or {}))


def _rerun_capture(fn, device):
    """A stand-in for CUDA graph recording with the same contract: a static output buffer that
    each replay refills by running ``fn`` on the static inputs it closes over; the recording
    fails on host syncs, as a capture would."""
    with _NoHostSync():
        out = fn()
    return (lambda: out.copy_(fn())), out


GRAPH_MODES = [("none", 0), ("prefix", 0), ("dual", 2), ("delayed", 0)]


@pytest.mark.parametrize(("mode", "near"), GRAPH_MODES)
def test_graphed_model_replays_what_the_model_computes(tiny_mdm, mode, near):
    """Replays read the step's inputs through static buffers, the cache advances as the forward
    would advance it, kept logits are not overwritten by later replays, and rows leaving the
    batch (a reallocated cache) get new graphs: the tokens are the eager model's."""
    from mdmctl.sampling.cache import CachedMDM
    from mdmctl.sampling.graphs import GraphedModel

    dec = Decoding(block_length=4, threshold=0.3, cfg=0.5, eos_id=EOS, stop_at_eos=True)
    prompts, lengths = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]], [12, 12, 8]

    def wrap(m):
        return (lambda x, d: m(x, doc_ids=d)) if mode == "none" else CachedMDM(m, mode, near, MASK)

    eager = _run(wrap(tiny_mdm), prompts, dec, length=lengths, steps=lengths)
    g = GraphedModel(tiny_mdm, capture=_rerun_capture)
    first = _run(wrap(g), prompts, dec, length=lengths, steps=lengths)
    assert torch.equal(first.tokens, eager.tokens) and first.nfe == eager.nfe
    assert 0 < g.recorded < g.replayed
    again = _run(wrap(g), prompts, dec, length=lengths, steps=lengths)
    assert torch.equal(again.tokens, eager.tokens)
    # Finished rows kept (as generate does under --cuda-graphs): the same output and forwards,
    # and a second batch of the same shapes (pooled caches) records nothing new.
    keep = replace(dec, keep_batch=True)
    kept = _run(wrap(g), prompts, keep, length=lengths, steps=lengths)
    recorded = g.recorded
    assert kept.rows() == _run(wrap(g), prompts, keep, length=lengths, steps=lengths).rows()
    assert g.recorded == recorded
    assert torch.equal(kept.tokens, eager.tokens) and kept.nfe == eager.nfe


def test_graphed_arm_decodes_every_step_from_one_graph():
    """The ARM's decode steps run at a cache column given as a tensor over a cache that spans
    the context: one graph per batch shape serves every step of every prompt, and the tokens
    are the eager model's (ragged rows, left padding, rows leaving the batch)."""
    from mdmctl.sampling.arm import sample_arm
    from mdmctl.sampling.graphs import GraphedModel

    torch.manual_seed(0)
    arm = Transformer(ModelConfig.from_name("tiny", objective="arm", vocab_size=97, seq_len=48))
    arm = arm.eval()
    g = GraphedModel(arm, capture=_rerun_capture)
    prompts = [[1, 2, 3, 4, 6, 7], [7, 8], [9, 10, 11]]
    kw = dict(eos_id=5, generator=torch.Generator(), stop_at_eos=False)
    for p in prompts:  # batch 1, prompts of three lengths: one graph for all their steps
        assert sample_arm(g, [p], length=9, **kw) == sample_arm(arm, [p], length=9, **kw)
    assert g.recorded == 1 and g.replayed == 3 * 8
    # Rows ending at the context's end (fit_length's lengths), the longest prompt the shortest
    # generation, kept in the batch: the batch runs past that row's end, unread.
    ragged = dict(length=[44, 43], eos_id=5, generator=torch.Generator(), keep_batch=True)
    fit = [[1, 2, 3, 4], [7, 8, 9, 10, 11]]
    assert sample_arm(g, fit, **ragged)[0] == sample_arm(arm, fit, **{**ragged, "keep_batch": 0})[0]
    kw = dict(length=[6, 9, 4], eos_id=5, generator=torch.Generator())
    eager, n = sample_arm(arm, prompts, **kw)
    assert sample_arm(g, prompts, **kw) == (eager, n)
    recorded = g.recorded  # finished rows stay (keep_batch): every step replays the graph of
    # the batch's first decode step, recorded by the run above (the pooled cache's addresses)
    assert sample_arm(g, prompts, keep_batch=True, **kw)[0] == eager and g.recorded == recorded
    # The logits themselves, for left-padded rows: each row's positions start at its own token.
    x = torch.tensor([[5, 5, 5, 1, 2], [5, 3, 4, 6, 7]])  # (B, P), row 0 padded by 2
    logits = []
    for m in (arm, g):
        cache = m.new_cache(2, "cpu", torch.float32, 8)
        cache.pad_left(torch.tensor([2, 0]))
        m(x, cache=cache)
        logits.append(m(torch.tensor([[8], [9]]), cache=cache))
        assert cache.length == 6
    torch.testing.assert_close(logits[1], logits[0])


def test_graphed_model_runs_eagerly_once_recording_fails(tiny_mdm, mdmctl_log):
    from mdmctl.sampling.graphs import GraphedModel

    def cannot(fn, device):
        fn()  # as CUDA graphs warm up before they capture
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    g = GraphedModel(tiny_mdm, capture=cannot)
    x = torch.arange(1, 7)[None]
    cache = g.new_cache(1, "cpu", torch.float32, 6)
    assert torch.equal(g(x, cache=cache), tiny_mdm(x)) and cache.length == 6
    assert torch.equal(g(x[:, :4]), tiny_mdm(x[:, :4]))
    assert g.failed == "operation not permitted when stream is capturing" and g.recorded == 0
    assert mdmctl_log.text.count("recording failed") == 1


def test_graphed_model_keeps_at_most_max_graphs_and_max_bytes(tiny_mdm):
    from mdmctl.sampling.graphs import GraphedModel

    g = GraphedModel(tiny_mdm, capture=_rerun_capture, max_graphs=2)
    for n in (3, 4, 5, 3):
        x = torch.arange(1, n + 1)[None]
        assert torch.equal(g(x), tiny_mdm(x))
    assert g.recorded == 4 and len(g.graphs) == 2
    # Output buffers past max_bytes evict too, but never the graph just recorded.
    one = g.held_bytes() // 2  # both kept graphs output (1, n, V): n = 5 and 3
    g.max_graphs, g.max_bytes = 32, one
    for n in (6, 7):
        x = torch.arange(1, n + 1)[None]
        assert torch.equal(g(x), tiny_mdm(x))
        assert list(g.graphs)[-1][0][0] == ("idx", (1, n), torch.long) and len(g.graphs) == 1
    assert g.held_bytes() > g.max_bytes
    # A refresh fills the canvas and leaves the cache's offset after it, as the forward does.
    x = torch.arange(1, 7)[None]
    cache = tiny_mdm.new_cache(1, "cpu", torch.float32, 6)
    assert torch.equal(g(x, cache=cache), tiny_mdm(x)) and cache.length == 6


def test_cuda_graphs_option_rules(ckpts):
    from .conftest import run

    r = run("sample", "--checkpoint", ckpts["mdm"], "--length", "4", "--cuda-graphs",
            "--device", "cpu", code=2)  # fmt: skip
    assert "--cuda-graphs needs a CUDA device; this run is on cpu" in r.stdout + r.stderr
    r = run("sample", "--checkpoint", ckpts["arm"], "--length", "4", "--cuda-graphs",
            "--device", "cpu", code=2)  # fmt: skip
    assert "--cuda-graphs needs a CUDA device; this run is on cpu" in r.stdout + r.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("mode", "near"), GRAPH_MODES)
def test_cuda_graphs_sample_what_the_eager_model_samples(mode, near):
    """Recorded CUDA graphs replay the eager forwards (attention through SDPA in both, since
    ragged rows record through SDPA's dense mask); eager eos-stopped rows leave the batch."""
    from mdmctl.sampling.cache import CachedMDM
    from mdmctl.sampling.graphs import GraphedModel

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", vocab_size=97, mask_id=MASK, seq_len=48)
    mdm = Transformer(cfg, backend="sdpa").cuda().eval()
    dec = Decoding(block_length=4, threshold=0.3, cfg=0.5, eos_id=EOS, stop_at_eos=True)
    prompts, lengths = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]], [12, 12, 8]
    kw = dict(length=lengths, steps=lengths, mask_id=MASK, pad_id=PAD, decoding=dec,
              device="cuda")  # fmt: skip

    def wrap(m):  # the delayed cache's widths in steps of 8, as generate runs it under graphs
        if mode == "none":
            return lambda x, d: m(x, doc_ids=d)
        return CachedMDM(m, mode, near, MASK, width_multiple=8 if mode == "delayed" else 1)

    g = GraphedModel(mdm)
    runs = [sample_mdm(wrap(m), prompts, generator=torch.Generator(), **kw) for m in (mdm, g, g)]
    assert all(torch.equal(runs[0].tokens, r.tokens) for r in runs[1:])
    assert 0 < g.recorded < g.replayed


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_decode_what_the_eager_arm_decodes():
    from mdmctl.sampling.arm import sample_arm
    from mdmctl.sampling.graphs import GraphedModel

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", objective="arm", vocab_size=97, seq_len=48)
    arm = Transformer(cfg, backend="sdpa").cuda().eval()
    g = GraphedModel(arm)
    prompts = [[1, 2, 3, 4, 6, 7], [7, 8], [9, 10, 11]]
    kw = dict(length=[6, 9, 4], eos_id=5, generator=torch.Generator(), device="cuda")
    eager = sample_arm(arm, prompts, **kw)
    assert sample_arm(g, prompts, **kw) == eager and sample_arm(g, prompts, **kw) == eager
    assert 0 < g.recorded < g.replayed


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_failed_cuda_capture_runs_eagerly_on_the_callers_stream():
    """A forward that syncs with the host cannot be captured: the call and later ones run
    eagerly, on the stream the caller had (ending the capture raises inside torch.cuda.graph)."""
    from mdmctl.sampling.graphs import GraphedModel

    class Syncs(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, idx, doc_ids=None, cache=None, select=None):
            out = self.model(idx, doc_ids=doc_ids, cache=cache, select=select)
            out.sum().item()  # not permitted while a stream is capturing
            return out

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", vocab_size=97, mask_id=MASK, seq_len=48)
    mdm = Transformer(cfg, backend="sdpa").cuda().eval()
    g, stream = GraphedModel(Syncs(mdm)), torch.cuda.current_stream()
    x = torch.arange(1, 7, device="cuda")[None]
    for _ in range(2):
        assert torch.equal(g(x), mdm(x)) and torch.cuda.current_stream() == stream
    assert g.failed and g.recorded == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_of_a_compiled_model_sample_what_it_samples_eagerly():
    """--compile with --cuda-graphs: the compiled code is warmed up (and recompiled) outside the
    capture, then recorded; the dual-cache MDM and the ARM give the compiled model's tokens."""
    from mdmctl.sampling import compile_model
    from mdmctl.sampling.arm import sample_arm
    from mdmctl.sampling.cache import CachedMDM
    from mdmctl.sampling.graphs import GraphedModel

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", vocab_size=97, mask_id=MASK, seq_len=48)
    mdm = compile_model(Transformer(cfg, backend="sdpa").cuda().eval(), "cuda")
    dec = Decoding(block_length=4, threshold=0.5, eos_id=5, keep_batch=True)
    prompts = [[1, 2, 3, 4, 6, 7], [7, 8], [9, 10, 11]]
    kw = dict(length=12, steps=12, mask_id=MASK, pad_id=PAD, decoding=dec, device="cuda")
    g = GraphedModel(mdm)
    runs = [sample_mdm(CachedMDM(m, "dual"), prompts, generator=torch.Generator(), **kw).tokens
            for m in (mdm, g)]  # fmt: skip
    assert torch.equal(*runs) and g.failed is None and 0 < g.recorded < g.replayed
    acfg = ModelConfig.from_name("tiny", objective="arm", vocab_size=97, seq_len=48)
    arm = compile_model(Transformer(acfg, backend="sdpa").cuda().eval(), "cuda")
    akw = dict(length=[6, 9, 4], eos_id=5, generator=torch.Generator(), device="cuda")
    ga = GraphedModel(arm)
    eager = sample_arm(arm, prompts, **akw, keep_batch=True)
    assert sample_arm(ga, prompts, **akw, keep_batch=True) == eager and ga.failed is None


@pytest.mark.parametrize(
    "values,message",
    [
        ({"schedule": "smdm", "sampler": "ancestral"}, "--schedule"),
        ({"schedule": "llada", "threshold": 0.9}, "--schedule sets how many"),
        ({"factor_rule": "leading"}, "--factor-rule applies with --factor"),
        ({"schedule": "even"}, "--schedule: expected one of smdm, llada, rounded"),
    ],
)
def test_schedule_options_refuse_what_they_cannot_do(values, message):
    with pytest.raises(ConfigError, match=message):
        SampleConfig.create(**values)


def test_an_arm_refuses_a_schedule():
    from mdmctl.sampling.config import for_objective

    with pytest.raises(ConfigError, match="--schedule applies to objective 'mdm'"):
        for_objective(SampleConfig.create(schedule="smdm"), "arm")
    assert SampleConfig.create(factor=1.0).decoding.reveal_schedule == "smdm"
    assert SampleConfig.create(block_length=8).decoding.reveal_schedule == "llada"
