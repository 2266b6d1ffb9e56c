from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mdmctl.config import ModelConfig
from mdmctl.model import Transformer
from mdmctl.sampling.arm import sample_arm
from mdmctl.sampling.mdm import Decoding, cfg_logits, sample_mdm
from mdmctl.sampling.select import gumbel_argmax

MASK, PAD = 96, 95


@pytest.fixture
def mdm(tiny_cfg):
    m = Transformer(tiny_cfg).eval()
    return lambda x, d: m(x, doc_ids=d)


@pytest.mark.parametrize("sampler", ["ancestral", "confidence"])
def test_no_mask_left_and_seeded(mdm, sampler):
    dec = Decoding(sampler=sampler, temperature=1.0)
    kw = dict(length=10, steps=5, mask_id=MASK, pad_id=PAD, decoding=dec)
    a = sample_mdm(mdm, [[1, 2, 3], [4]], generator=torch.Generator().manual_seed(1), **kw)
    b = sample_mdm(mdm, [[1, 2, 3], [4]], generator=torch.Generator().manual_seed(1), **kw)
    assert a.tokens.shape == (2, 10) and not (a.tokens == MASK).any()
    assert torch.equal(a.tokens, b.tokens)
    assert 1 <= a.nfe <= 5


@pytest.mark.parametrize(
    "schedule,want",
    [
        # SMDM: int(n (1 - s/t)) of the n masked on linspace(1, 1e-5): 16 * 0.2499975 -> 3,
        # 13 * 0.333329 -> 4, 9 * 0.49999 -> 4, then the last 5.
        ("smdm", [16, 13, 9, 5]),
        ("llada", [16, 12, 8, 4]),
        ("rounded", [16, 12, 8, 4]),
        (None, [16, 13, 9, 5]),  # one block: SMDM's
    ],
)
def test_confidence_reveals_on_schedule(mdm, schedule, want):
    """16 tokens in 4 steps on each schedule, each revealed token kept (never re-masked)."""
    seen = []

    def spy(x, d):
        seen.append(x.clone())
        return mdm(x, d)

    sample_mdm(
        spy,
        [[5, 6]],
        length=16,
        steps=4,
        mask_id=MASK,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(0),
        decoding=Decoding(schedule=schedule),
    )
    masked = [int((x == MASK).sum()) for x in seen]
    assert masked == want
    for prev, nxt in zip(seen, seen[1:], strict=False):
        keep = prev != MASK
        assert torch.equal(prev[keep], nxt[keep])  # revealed tokens never change; prompt kept


def _dream_counts(n: int, steps: int) -> list[int]:
    """Dream's diffusion_generate restated (its count lines, batch 1): reveal
    int(num_mask * (1 - s/t)) on linspace(1, 1e-3), all that is left at the last step."""
    timesteps = torch.linspace(1, 1e-3, steps + 1)
    out, masked = [], n
    for i in range(steps):
        t, s = timesteps[i], timesteps[i + 1]
        num_mask = torch.tensor(masked) / 1  # mask_index.sum() / batch: a float tensor
        k = int(num_mask * (1 - s / t)) if i < steps - 1 else int(num_mask)
        out.append(k)
        masked -= k
    return out


@pytest.mark.parametrize("n,steps", [(16, 4), (100, 7), (10_000, 2), (257, 64), (1000, 1000)])
def test_dream_schedule_is_dreams_count(n, steps):
    from mdmctl.sampling.schedule import reveal_counts

    masked, got = torch.tensor([n]), []
    for k in range(steps):
        c = reveal_counts("dream", k, masked, torch.tensor([n]), torch.tensor([steps]))
        got.append(int(c))
        masked = masked - c
    assert got == _dream_counts(n, steps)
    if (n, steps) == (10_000, 2):  # where Dream's 1e-3 and SMDM's 1e-5 differ
        smdm = reveal_counts("smdm", 0, torch.tensor([n]), torch.tensor([n]), torch.tensor([2]))
        assert got[0] == 4995 and int(smdm) == 4999


def test_ragged_batch_equals_alone(mdm):
    """A prompt's sample is identical alone and in a ragged batch (padding never leaks in)."""
    kw = dict(length=8, steps=8, mask_id=MASK, pad_id=PAD, decoding=Decoding(cfg=0.5))
    alone = sample_mdm(mdm, [[7, 8]], generator=torch.Generator().manual_seed(0), **kw).tokens
    batch = sample_mdm(
        mdm, [[1, 2, 3, 4, 5, 6], [7, 8]], generator=torch.Generator().manual_seed(0), **kw
    ).tokens
    assert torch.equal(batch[1], alone[0])
    assert not (batch == PAD).any()


def test_cfg_zero_is_plain_conditional(mdm):
    x = torch.tensor([[1, 2, MASK, MASK]])
    d = torch.zeros_like(x)
    pm = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(cfg_logits(mdm, x, d, pm, MASK, 0.0), mdm(x, d))
    g = cfg_logits(mdm, x, d, pm, MASK, 1.5)
    cond, unc = mdm(x, d), mdm(torch.tensor([[MASK] * 4]), d)
    expect = unc + 2.5 * (cond - unc)
    torch.testing.assert_close(g[..., :MASK], expect[..., :MASK], atol=1e-4, rtol=1e-4)
    assert torch.isneginf(g[..., MASK]).all()
    # an empty prompt makes CFG a no-op
    torch.testing.assert_close(cfg_logits(mdm, x, d, torch.zeros_like(pm), MASK, 1.5), mdm(x, d))


def test_gumbel_temperature_zero_is_argmax_and_float64_sampling_matches_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert gumbel_argmax(logits, 0.0, torch.Generator()).item() == 2
    g = torch.Generator().manual_seed(0)
    draws = gumbel_argmax(logits.expand(20000, 3), 1.0, g)
    freq = torch.bincount(draws, minlength=3).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits[0], 0), atol=0.015, rtol=0)


def test_arm_kv_cache_sampling_equals_recompute():
    cfg = ModelConfig.from_name("tiny", objective="arm", vocab_size=50, seq_len=32)
    m = Transformer(cfg).eval()
    out, nfe = sample_arm(
        m,
        [[3, 4, 5], [6, 7, 8]],
        length=6,
        eos_id=0,
        generator=torch.Generator(),
        temperature=0.0,
        stop_at_eos=False,
    )
    for prompt, gen in zip([[3, 4, 5], [6, 7, 8]], out, strict=True):
        x = [0] + prompt
        for _ in range(6):
            x.append(int(m(torch.tensor([x]))[0, -1].argmax()))
        assert gen == x[4:]
    assert nfe == 6  # one prefill + 5 decode steps, both rows in one batch


def test_cfg_unconditional_pass_masks_exactly_each_rows_prompt(mdm):
    """Ragged batch with CFG: the second half of the batched forward is the unconditional input,
    with each row's own prompt positions (and nothing else) replaced by the mask."""
    seen = []

    def spy(x, d):
        seen.append((x.clone(), None if d is None else d.clone()))
        return mdm(x, d)

    sample_mdm(
        spy,
        [[1, 2, 3], [4]],
        length=4,
        steps=1,
        mask_id=MASK,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(0),
        decoding=Decoding(cfg=1.0),
    )
    x, d = seen[0]
    cond, unc = x.chunk(2)
    assert cond.tolist() == [
        [1, 2, 3, MASK, MASK, MASK, MASK],
        [4, MASK, MASK, MASK, MASK, PAD, PAD],
    ]
    assert unc.tolist() == [[MASK] * 7, [MASK] * 5 + [PAD, PAD]]
    assert d.chunk(2)[0].tolist() == [[0] * 7, [0] * 5 + [1, 1]]  # padding is its own segment


def _arm(seq_len: int = 32) -> Transformer:
    cfg = ModelConfig.from_name("tiny", objective="arm", vocab_size=50, seq_len=seq_len)
    return Transformer(cfg).eval()


def test_arm_left_padded_prefill_equals_each_row_alone():
    """Ragged prompts in one cache: each row's logits are its logits alone (positions start at
    its own first token, padding never attended)."""
    m = _arm()
    rows = [[0, 3, 4, 5, 6, 7], [0, 8, 9]]
    x = torch.tensor([rows[0], [0, 0, 0] + rows[1]])
    cache = m.new_cache(2, "cpu", torch.float32, 10)
    cache.pad_left(torch.tensor([0, 3]))
    with torch.no_grad():
        pre = m(x, cache=cache)[:, -1]
        nxt = m(torch.tensor([[11], [12]]), cache=cache)[:, -1]
        for b, (r, tok) in enumerate(zip(rows, (11, 12), strict=True)):
            alone = m(torch.tensor([r + [tok]]))[0]
            torch.testing.assert_close(pre[b], alone[-2], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(nxt[b], alone[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stop_at_eos", [False, True])
def test_arm_ragged_batch_equals_alone_and_finished_rows_leave(stop_at_eos):
    m = _arm()
    prompts, lengths = [[3, 4, 5, 6, 7], [8], [9, 10, 11]], [3, 9, 6]
    kw = dict(eos_id=0, temperature=0.0, stop_at_eos=stop_at_eos)
    widths = []
    hook = m.register_forward_hook(lambda mod, args, out: widths.append(args[0].shape[0]))
    together, _ = sample_arm(m, prompts, length=lengths, generator=torch.Generator(), **kw)
    hook.remove()
    for p, n, got in zip(prompts, lengths, together, strict=True):
        alone, _ = sample_arm(m, [p], length=n, generator=torch.Generator(), **kw)
        assert got == alone[0]
        assert len(got) == n or (stop_at_eos and got[-1] == 0 and 0 not in got[:-1])
    assert widths[0] == 3 and widths[-1] == 1  # the shorter rows left the batch


def test_arm_rows_that_stay_run_past_the_context_unread():
    """The longest prompt has the shortest generation, so the batch runs past its end of the
    context: rows that stay in the batch (temperature > 0, or ``keep_batch``) run on with their
    positions held at the context's last, and every row still gets what it gets alone."""
    m = _arm(seq_len=16)
    prompts, lengths = [[3, 4, 5, 6, 7], [8]], [11, 15]  # 1 + 5 + 11 - 1 = 16 = seq_len
    kw = dict(length=lengths, eos_id=0, stop_at_eos=False)
    kept, _ = sample_arm(m, prompts, generator=torch.Generator(), keep_batch=True, **kw)
    left, _ = sample_arm(m, prompts, generator=torch.Generator(), **kw)
    assert kept == left and [len(r) for r in kept] == lengths
    hot, _ = sample_arm(m, prompts, generator=torch.Generator().manual_seed(0), temperature=1.0,
                        **kw)  # fmt: skip
    assert [len(r) for r in hot] == lengths  # was: "sequence of 17 tokens exceeds seq_len=16"
    with pytest.raises(ValueError, match="exceed seq_len=16"):
        sample_arm(m, prompts, length=[12, 15], eos_id=0, generator=torch.Generator())


def test_arm_eos_stop_keeps_the_eos_and_cuts_after_it():
    """With every token forced to eos, each row returns exactly its eos, in one forward."""
    m = _arm()
    m.register_forward_hook(lambda mod, args, out: out.index_fill(-1, torch.tensor([0]), 1e9))
    out, nfe = sample_arm(
        m, [[3, 4], [5]], length=5, eos_id=0, generator=torch.Generator(), temperature=1.0
    )
    assert out == [[0], [0]] and nfe == 1


@pytest.mark.parametrize(
    "objective,options",
    [
        ("mdm", {"sampler": "ancestral"}),
        ("mdm", {"remasking": "random", "top_k": 50, "block_length": 2}),
        ("arm", {"top_p": 0.95}),
    ],
)
def test_samples_do_not_depend_on_the_batch_size(ckpts, objective, options):
    """Each sequence of a request draws from its own stream (seeded by its place in the
    request), so sampled tokens are the same at any --batch-size, and a prompt's samples differ."""
    from dataclasses import replace

    from mdmctl.sampling import SampleConfig, sample_from_checkpoint

    base = SampleConfig.create(checkpoint=str(ckpts[objective]), prompts=("the cat", "a", "the dog sat"),
                        num_samples=2, length=6, temperature=1.0, device="cpu", stop_at_eos=False,
                        **options)  # fmt: skip
    one, four = (sample_from_checkpoint(replace(base, batch_size=n)) for n in (1, 4))
    ids = [s.token_ids for s in one.samples]
    assert ids == [s.token_ids for s in four.samples]
    assert ids[0] != ids[1] or ids[2] != ids[3]  # two samples of a prompt: two streams
    first = sample_from_checkpoint(replace(base, prompts=("the cat",), num_samples=1))
    assert first.samples[0].token_ids == ids[0]  # the first sequence's stream is the seed's


@pytest.mark.parametrize("sampler", ["confidence", "ancestral"])
@pytest.mark.parametrize("temperature,cfg", [(0.0, 0.0), (1.0, 0.0), (0.7, 0.4)])
@pytest.mark.parametrize("steps", [12, 5, 3])
def test_one_block_is_the_reference_sampler(mdm, sampler, temperature, cfg, steps):
    """Without blocks, with one block spanning the generation, and (one token per step)
    threshold 1.0: token for token and forward for forward the pre-blocks sampler, frozen in
    tests/reference_sampler.py, on a ragged batch."""
    from tests.reference_sampler import reference_sample

    prompts, kw = [[1, 2], [3, 4, 5, 6], [7]], dict(length=12, mask_id=MASK, pad_id=PAD)
    want, nfe = reference_sample(mdm, prompts, steps=steps, generator=torch.Generator()
                                 .manual_seed(3), sampler=sampler, temperature=temperature,
                                 cfg=cfg, **kw)  # fmt: skip
    base = Decoding(sampler=sampler, temperature=temperature, cfg=cfg)
    if sampler == "confidence":  # the reference keeps the rounded schedule
        base = replace(base, schedule="rounded")
    variants = [base, Decoding(**{**vars(base), "block_length": 12})]
    if sampler == "confidence" and steps == 12:
        variants.append(Decoding(**{**vars(base), "threshold": 1.0, "schedule": None}))
    for dec in variants:
        got = sample_mdm(mdm, prompts, steps=steps, generator=torch.Generator().manual_seed(3),
                         decoding=dec, **kw)  # fmt: skip
        assert torch.equal(got.tokens, want) and got.nfe == nfe, dec


def test_noise_is_float64_and_drawn_at_masked_positions_only(mdm):
    """One step over a canvas of prompt and masks draws exactly one float64 uniform per masked
    position and vocabulary entry (nothing for the prompt or the padding), from each row's own
    stream; confidence is fp32 whatever the logits' dtype."""
    from mdmctl.sampling.select import RowStreams, token_confidence

    prompts, V = [[1, 2, 3], [4]], 97  # canvas 3 + 4: row 0 has 4 masks, row 1 4 and 2 padding
    kw = dict(length=4, steps=1, mask_id=MASK, pad_id=PAD, decoding=Decoding(temperature=1.0))
    g = torch.Generator().manual_seed(5)
    sample_mdm(mdm, prompts, generator=g, **kw)
    ref = torch.Generator().manual_seed(5)
    torch.rand((8, V), generator=ref, dtype=torch.float64)
    assert torch.equal(g.get_state(), ref.get_state())
    rows = RowStreams.seeded([5, 6], "cpu")
    sample_mdm(mdm, prompts, generator=rows, **kw)
    for gen, seed in zip(rows.generators, (5, 6), strict=True):
        ref = torch.Generator().manual_seed(seed)
        torch.rand((4, V), generator=ref, dtype=torch.float64)
        assert torch.equal(gen.get_state(), ref.get_state())
    logits = torch.randn(3, V, dtype=torch.bfloat16)
    assert token_confidence(logits, logits.argmax(-1)).dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_row_streams_draw_on_the_model_device(ckpts):
    """On CUDA the streams live on the GPU (no host-side noise copied over every step), and
    sampled tokens still do not depend on the batch size."""
    from dataclasses import replace

    from mdmctl.sampling import SampleConfig, sample_from_checkpoint
    from mdmctl.sampling.select import RowStreams

    streams = RowStreams.seeded([1, 2], "cuda")
    u = streams.rand(torch.tensor([0, 0, 1], device="cuda"), (5,), torch.float64)
    assert u.device.type == "cuda" and all(g.device.type == "cuda" for g in streams.generators)
    base = SampleConfig.create(checkpoint=str(ckpts["mdm"]), prompts=("the cat", "a", "the dog"),
                        num_samples=2, length=6, temperature=1.0, device="cuda",
                        stop_at_eos=False)  # fmt: skip
    one, four = (sample_from_checkpoint(replace(base, batch_size=n)) for n in (1, 4))
    assert [s.token_ids for s in one.samples] == [s.token_ids for s in four.samples]


def test_gumbel_groups_do_not_change_the_draws(monkeypatch):
    """Under RowStreams the noise is drawn and reduced in groups of rows (bounded memory): any
    grouping gives what one (N, V) draw of every row's uniforms gives."""
    import mdmctl.sampling.select as select

    logits, rows = torch.randn(30, 50), torch.tensor([0] * 7 + [1] * 3 + [2] * 20)
    u = select.RowStreams.seeded([1, 2, 3], "cpu").rand(rows, (50,), torch.float64)
    want = select._perturbed(logits, u, 0.7).argmax(-1)
    for cap in (50, 500, 1 << 24):  # one row a group (the 20-row one too large), some, all
        monkeypatch.setattr(select, "GUMBEL_CHUNK", cap)
        got = select.gumbel_argmax(logits, 0.7, select.RowStreams.seeded([1, 2, 3], "cpu"), rows)
        assert torch.equal(got, want)


def test_for_objective_drops_only_what_a_recipe_left(mdmctl_log):
    """For an ARM: a recipe's CFG still at the recipe's value becomes 0, a chosen one is refused;
    steps and sampler are dropped, with a warning only when the user chose them."""

    from mdmctl.errors import ConfigError
    from mdmctl.sampling import SampleConfig, for_objective

    recipe = SampleConfig.create(
        cfg=0.8, steps=32, defaults=frozenset({("cfg", 0.8), ("steps", 32)})
    )
    arm = for_objective(recipe, "arm")
    assert (arm.decoding.cfg, arm.steps, arm.decoding.sampler) == (0.0, None, "confidence")
    assert not mdmctl_log.records
    assert for_objective(recipe, "mdm") == recipe
    with pytest.raises(ConfigError, match="--cfg applies to objective 'mdm'"):
        for_objective(recipe.evolve(cfg=0.5), "arm")  # changed after the recipe set it
    for_objective(recipe.evolve(steps=64, sampler="ancestral"), "arm")
    assert [r.getMessage() for r in mdmctl_log.records] == [
        "--steps, --sampler apply only to MDM checkpoints; ignored for this ARM checkpoint"
    ]


def test_arm_pretrain_summary_samples_without_a_warning(tmp_path, corpus_dir):
    from tests.conftest import run

    r = run("pretrain", "--objective", "arm", "--size", "tiny", "--seq-len", "32", "--steps", "2",
            "--batch-size", "4", "--data", corpus_dir, "--out", tmp_path / "a", "--show-samples",
            "1", "--device", "cpu")  # fmt: skip
    assert "sample 1:" in r.stdout + r.stderr
    assert "only to MDM checkpoints" not in " ".join((r.stdout + r.stderr).split())


def _smdm_greedy(model, prompt, *, length, steps, cfg):
    """SMDM's ``diff_sample`` with ``alg='greddy'`` at temperature 0 and batch 1, restated:
    float32 grid linspace(1, 1e-5, steps + 1), step i reveals int(n (1 - s/t)) of the n masked
    (all at the last step) by float64 confidence, CFG uncond + (w + 1)(cond - uncond) with the
    prompt masked in the unconditional pass."""
    x = torch.tensor([prompt + [MASK] * length])
    grid = torch.linspace(1, 1e-5, steps + 1)
    for i in range(steps):
        masked = x == MASK
        if cfg > 0:
            un = x.clone()
            un[:, : len(prompt)] = MASK
            cond, unc = model(torch.cat([x, un]), None).chunk(2)
            guided = unc + (cfg + 1) * (cond - unc)  # the mask column stays -inf (never chosen)
            logits = torch.where(torch.isneginf(cond), cond, guided)[masked]
        else:
            logits = model(x, None)[masked]
        x0 = logits.argmax(-1)
        conf = logits.double().softmax(-1).gather(-1, x0[:, None])[:, 0]
        n = masked.sum()
        k = int(n * (1 - grid[i + 1] / grid[i])) if i < steps - 1 else int(n)
        if k > 0:
            keep = torch.full_like(x0, MASK)
            top = conf.topk(k).indices
            keep[top] = x0[top]
            x[masked] = keep
    return x[0, len(prompt) :]


@pytest.mark.parametrize("cfg", [0.0, 0.8])
@pytest.mark.parametrize("length,steps", [(10, 4), (20, 7), (16, 16), (12, 32)])
def test_smdm_schedule_is_smdms_sampler(mdm, cfg, length, steps):
    """``schedule='smdm'`` (the default without blocks) decodes token for token as SMDM's own
    sampler at batch 1, including more steps than tokens (steps that reveal nothing)."""
    for prompt in ([1, 2, 3], [4, 5, 6, 7, 8, 9]):
        want = _smdm_greedy(mdm, prompt, length=length, steps=steps, cfg=cfg)
        got = sample_mdm(mdm, [prompt], length=length, steps=steps, mask_id=MASK, pad_id=PAD,
                         generator=torch.Generator().manual_seed(0),
                         decoding=Decoding(cfg=cfg))  # fmt: skip
        assert torch.equal(got.tokens[0], want)
