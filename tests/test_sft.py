from __future__ import annotations

import json

import pytest
import torch

from mdmctl.autoregressive import arm_sft_nll
from mdmctl.config import FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from mdmctl.data.sft import Tokenized, collate, read_examples
from mdmctl.diffusion import mdm_sft_loss
from mdmctl.errors import ConfigError, DataError
from mdmctl.model import Transformer
from mdmctl.train import finetune, pretrain

from .conftest import SHARED


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_formats(tmp_path):
    pr = read_examples(_write(tmp_path / "a.jsonl", [{"prompt": "Q1", "completion": " A1"}]))
    assert (pr[0].prompt, pr[0].response) == ("Q1", " A1")
    g = read_examples(_write(tmp_path / "g.jsonl", [{"question": "2+2?", "answer": "4\n#### 4"}]))
    # SMDM's two examples per problem, pieces kept byte for byte (sft/gsm8k_data.py)
    assert [(e.prompt_pieces, e.response) for e in g] == [
        (("Question: 2+2?",), "Answer: 4\n"),
        (("Question: 2+2?", "Answer: 4\n"), "#### 4"),
    ]
    chat = read_examples(
        _write(
            tmp_path / "c.jsonl",
            [
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                    ]
                }
            ],
        )
    )
    assert chat[0].prompt == "USER: hi\nASSISTANT: " and chat[0].response == "hello"
    (tmp_path / "e.txt").write_text("What is 3*4?||<<3*4=12>> #### 12\n")
    eq = read_examples(tmp_path / "e.txt")
    assert [(e.prompt, e.response) for e in eq] == [
        ("Question: What is 3*4?", "Answer: <<3*4=12>> "),
        ("Question: What is 3*4?Answer: <<3*4=12>> ", "#### 12\n"),  # the line's newline kept
    ]
    custom = read_examples(
        _write(tmp_path / "x.jsonl", [{"q": "a", "r": "b"}]), prompt_field="q", response_field="r"
    )
    assert custom[0].response == "b"


@pytest.mark.skipif(not (SHARED / "gsm8k").is_dir(), reason="../shared/data/gsm8k is absent")
def test_shared_gsm8k_and_reversal_files_parse():
    assert len(read_examples(SHARED / "gsm8k" / "train.jsonl")) == 2 * 7473
    assert len(read_examples(SHARED / "gsm8k" / "equations_train.txt")) == 2 * 6973
    rc = read_examples(SHARED / "reversal_curse" / "all_prompts_train.jsonl")
    assert len(rc) == 3600 and rc[0].response.startswith(" ")


def test_bad_lines(tmp_path):
    with pytest.raises(DataError, match=r"b\.jsonl:2: missing field 'response'"):
        read_examples(
            _write(tmp_path / "b.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
        )
    with pytest.raises(DataError, match=r"e\.jsonl:1: empty response"):
        read_examples(_write(tmp_path / "e.jsonl", [{"prompt": "a", "response": "  "}]))


def test_collate_masks():
    b = collate([Tokenized([5, 6], [7, 0], "x"), Tokenized([5], [8, 9, 10, 0], "y")], eos_id=0)
    assert b.x0.tolist() == [[5, 6, 7, 0, 0], [5, 8, 9, 10, 0]]
    assert b.prompt_mask.tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    assert b.response_mask.tolist() == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert b.real_tokens == 9 and b.pad_eos_per_row == 0.5
    fixed = collate([Tokenized([5, 6], [7, 0], "x")], eos_id=0, pad_to=6)
    assert fixed.x0.tolist() == [[5, 6, 7, 0, 0, 0]] and fixed.pad_eos_per_row == 2
    # SMDM cuts each micro-batch to its own longest row
    assert b.rows(slice(0, 1), trim=True).x0.tolist() == [[5, 6, 7, 0]]
    assert b.rows(slice(0, 1), trim=False).x0.shape == (1, 5)


def _char_tok():
    """A byte-level BPE with no merges plus mdmctl's specials (what `mdmctl tokenize` builds)."""
    from mdmctl.tokenizer import train_bpe

    return train_bpe(iter(["Question: Answer: #### 0123456789 abc\n"]), vocab_size=300)


def test_gsm8k_examples_match_smdm_token_for_token(tmp_path):
    """SMDM (sft/gsm8k_data.py): x0 = tok(q) + tok(thought) + eos padding with prompt tok(q), and
    x0 = tok(q) + tok(thought) + tok('####' + answer) + [eos] + eos padding with prompt q + thought;
    every piece tokenized on its own, padded to the fixed length (256), the loss normalised by the
    non-prompt positions. Built here independently of mdmctl's reader and compared."""
    from mdmctl.data.sft import SFTLoader, tokenize_examples
    from mdmctl.tokenizer import EOS_TOKEN

    tok = _char_tok()
    eos = tok.token_to_id(EOS_TOKEN)
    line = "What is 3*4 plus 1?||3*4 = 12 and 12 + 1 = 13. #### 13\n"
    (tmp_path / "e.txt").write_text(line)
    ex = read_examples(tmp_path / "e.txt")
    got, dropped = tokenize_examples(ex, tok, eos, seq_len=64)
    q, rest = line.split("||")
    thought, answer = rest.split("####")

    def enc(text):
        return tok.encode(text).ids  # SMDM: tokenizer(text), the tokenizer's own specials

    q_ids, t_ids, a_ids = enc("Question: " + q), enc("Answer: " + thought), enc("####" + answer)
    want = [
        (q_ids, q_ids + t_ids + [eos] * (64 - len(q_ids) - len(t_ids))),
        (q_ids + t_ids, q_ids + t_ids + a_ids + [eos] * (64 - len(q_ids + t_ids + a_ids))),
    ]
    batch = SFTLoader(got, 2, 0, eos, pad_to=64).next_batch()
    rows = sorted(range(2), key=lambda b: int(batch.prompt_mask[b].sum()))
    for (prompt, x0), b in zip(want, rows, strict=True):
        assert batch.x0[b].tolist() == x0
        assert batch.prompt_mask[b].tolist() == [True] * len(prompt) + [False] * (64 - len(prompt))
    assert dropped == 0
    # a problem whose second example does not fit is dropped whole (SMDM's length2 > max_length)
    n2 = len(q_ids + t_ids + a_ids) + 1
    with pytest.raises(DataError, match="every example is longer"):
        tokenize_examples(ex, tok, eos, seq_len=n2 - 1)
    assert len(tokenize_examples(ex, tok, eos, seq_len=n2)[0]) == 2


def test_conditional_loss_normalisation_matches_smdm():
    """SMDM: sum(CE / p at masked) / (B * L - sum(prompt lengths)) over the padded batch."""
    torch.manual_seed(0)
    B, L, V = 3, 10, 7
    x0 = torch.randint(0, V - 1, (B, L))
    plen = torch.tensor([2, 3, 4])
    pm = torch.arange(L)[None, :] < plen[:, None]
    logits = torch.randn(B, L, V)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ours = mdm_sft_loss(lambda x: logits, x0, pm, V - 1, g1)
    t = torch.rand(B, generator=g2)
    p = ((1 - 1e-3) * t + 1e-3)[:, None].expand(B, L)
    masked = (torch.rand(B, L, generator=g2) < p) & ~pm
    ce = torch.nn.functional.cross_entropy(logits[masked], x0[masked], reduction="none")
    ref = (ce / p[masked]).sum() / (B * L - plen.sum())
    assert torch.allclose(ours, ref)


def test_random_batches_are_the_default_and_keep_smdm_padding():
    from mdmctl.data.sft import SFTLoader

    ex = [Tokenized([1], [3] * k + [0], str(k)) for k in range(1, 9) for _ in range(8)]
    rnd = SFTLoader(ex, 8, 0, eos_id=0)
    srt = SFTLoader(ex, 8, 0, eos_id=0, batching="sorted")
    assert rnd.batching == "random" and rnd.batches_per_epoch == srt.batches_per_epoch == 8
    # the same examples each epoch, in batches that mix lengths
    assert sorted(i for b in rnd._batches for i in b) == list(range(64))
    assert max(len({len(ex[i]) for i in b}) for b in rnd._batches) > 1
    assert srt.mean_pad_eos(8) == 0 < rnd.mean_pad_eos(8)
    # pad_eos per micro-batch: smaller micro-batches are cut to their own longest row
    assert rnd.mean_pad_eos(2) < rnd.mean_pad_eos(8)
    assert SFTLoader(ex, 8, 0, eos_id=0, pad_to=12).mean_pad_eos(2) == pytest.approx(12 - 6.5)


def test_conditional_loss_never_masks_prompt_and_normalises(tiny_cfg):
    m = Transformer(tiny_cfg)
    x0 = torch.randint(0, 96, (3, 20))
    pm = torch.zeros(3, 20, dtype=torch.bool)
    pm[:, :7] = True
    seen = []

    def spy(xt):
        seen.append(xt.clone())
        return m(xt)

    loss = mdm_sft_loss(spy, x0, pm, 96, torch.Generator().manual_seed(0))
    assert torch.equal(seen[0][pm], x0[pm])  # prompt untouched
    # hand computation from the same draws
    g = torch.Generator().manual_seed(0)
    p = (1 - 1e-3) * torch.rand(3, generator=g) + 1e-3
    masked = (torch.rand(3, 20, generator=g) < p[:, None]) & ~pm
    logp = (
        torch.log_softmax(m(torch.where(masked, 96, x0)), -1).gather(-1, x0[..., None]).squeeze(-1)
    )
    torch.testing.assert_close(loss, (-(logp * masked).sum(1) / p).sum() / (~pm).sum())
    # prompt dropout 1.0 masks every prompt position in the model input
    mdm_sft_loss(spy, x0, pm, 96, torch.Generator().manual_seed(0), cfg_dropout=1.0)
    assert bool((seen[-1][pm] == 96).all())
    # unconditional may mask prompt positions
    mdm_sft_loss(spy, x0, pm, 96, torch.Generator().manual_seed(3), conditional=False)
    assert bool((seen[-1][:, :7] == 96).any())


def test_arm_sft_scores_only_response():
    cfg = ModelConfig.from_name("tiny", objective="arm", vocab_size=50, seq_len=32)
    m = Transformer(cfg)
    b = collate([Tokenized([5, 6, 7], [8, 9, 0], "x"), Tokenized([5], [8, 0], "y")], eos_id=0)
    logits = m(b.x0)
    nll = arm_sft_nll(logits, b.x0, b.response_mask)
    logp = torch.log_softmax(logits, -1)
    expect0 = -(logp[0, 2, 8] + logp[0, 3, 9] + logp[0, 4, 0])
    expect1 = -(logp[1, 0, 8] + logp[1, 1, 0])  # the eos padding after the first eos is not scored
    torch.testing.assert_close(nll, torch.stack([expect0, expect1]))


def test_finetune_runs_resumes_and_drops_overlong(tmp_path, corpus_dir):
    base = pretrain(
        RunConfig(
            model=ModelConfig.from_name("tiny", seq_len=32),
            train=TrainConfig(steps=2, batch_size=4, val_batches=1, val_mc=2),
            data=str(corpus_dir),
            out=str(tmp_path / "base"),
            device="cpu",
        ),
        log=lambda m: None,
    )
    rows = [
        {"prompt": f"the cat sat on the mat {i}", "completion": " the dog ran."} for i in range(40)
    ]
    rows.append({"prompt": "birds sang " * 30, "completion": " x"})  # longer than 32 tokens
    data = _write(tmp_path / "sft.jsonl", rows)
    logs = []
    cfg = FinetuneConfig(
        init=str(base.checkpoint),
        data=str(data),
        out=str(tmp_path / "ft"),
        train=TrainConfig(steps=4, batch_size=4, val_every=2, val_mc=2, save_every=2),
        device="cpu",
    )
    r = finetune(cfg, log=logs.append)
    assert r.steps == 4 and r.val_loss > 0 and "MDM conditional" in r.val_loss_kind
    assert any("dropped 1 of" in m for m in logs)
    r2 = finetune(
        FinetuneConfig(
            **{
                **{f: getattr(cfg, f) for f in cfg.__slots__},
                "train": TrainConfig(steps=6, batch_size=4, val_every=2, val_mc=2, save_every=2),
            }
        ),
        log=logs.append,
    )
    assert r2.resumed_from == 4 and r2.steps == 6
    with pytest.raises(DataError, match="prompt is .* tokens; model context is 32"):
        finetune(
            FinetuneConfig(
                **{
                    **{f: getattr(cfg, f) for f in cfg.__slots__},
                    "out": str(tmp_path / "ft2"),
                    "overlong": "error",
                }
            ),
            log=lambda m: None,
        )


def test_finetune_config_rules():
    with pytest.raises(ConfigError, match="--cfg-dropout"):
        FinetuneConfig(init="a", data="b", cfg_dropout=1.5)
    with pytest.raises(ConfigError, match="not both"):
        FinetuneConfig(init="a", data="b", epochs=1, train=TrainConfig(steps=3))


def _toy_stop_run(batching: str, steps: int = 600) -> int:
    """Prompt k (one token) -> 'A' x k then eos, canvas of 9 generated tokens: fine-tune a fresh
    tiny MDM with mdmctl's loader, loss and sampler; return how many of the 8 prompts it answers
    with exactly k A's and nothing but eos after (the model learned where the answer ends)."""
    from mdmctl.config import ModelConfig
    from mdmctl.data.sft import SFTLoader
    from mdmctl.sampling.mdm import sample_mdm

    EOS, MASK, PAD, A = 0, 1, 2, 3
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", vocab_size=16, mask_id=MASK, seq_len=16)
    model = Transformer(cfg)
    ex = [Tokenized([4 + k], [A] * k + [EOS], str(k)) for k in range(1, 9) for _ in range(16)]
    loader = SFTLoader(ex, 16, seed=0, eos_id=EOS, batching=batching)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        b = loader.next_batch().rows(slice(0, 16), trim=True)
        g = torch.Generator().manual_seed(step)
        loss = mdm_sft_loss(lambda x: model(x), b.x0, b.prompt_mask, MASK, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = sample_mdm(
        lambda x, d: model(x, doc_ids=d),
        [[4 + k] for k in range(1, 9)],
        length=9,
        steps=9,
        mask_id=MASK,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(0),
    ).tokens.tolist()
    return sum(row == [A] * k + [EOS] * (9 - k) for k, row in zip(range(1, 9), out, strict=True))


def test_fine_tuned_mdm_learns_to_stop_with_the_default_batches():
    """Issue 8's toy: random batches padded with eos (the default) teach the MDM to stop; with
    length-sorted batches a row rarely sits beside a longer one, sees almost no padding eos, and
    the model fills its canvas (measured over torch seeds 0-5: random 7-8 of 8, sorted 1 of 8)."""
    assert _toy_stop_run("random") >= 7
    assert _toy_stop_run("sorted") <= 3


def test_gsm8k_rows_are_cut_at_smdms_256_whatever_the_context():
    """SMDM's finetune_mdm_gsm8k.py cuts every GSM8K row at 256 tokens, also for its 2048-context
    models; a shorter context pads to itself; other formats pad per micro-batch by default."""
    from mdmctl.data.sft import resolve_pad_to

    assert resolve_pad_to("auto", "gsm8k", 2048) == 256
    assert resolve_pad_to("auto", "gsm8k-equations", 2048) == 256
    assert resolve_pad_to("auto", "gsm8k", 128) == 128
    assert resolve_pad_to("auto", "prompt-response", 2048) is None
    assert resolve_pad_to("context", "gsm8k", 2048) == 2048
    assert resolve_pad_to("300", "gsm8k", 2048) == 300
    with pytest.raises(DataError, match="exceeds the fine-tuning context"):
        resolve_pad_to("300", "gsm8k", 256)
