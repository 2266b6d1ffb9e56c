"""LLaDA and Dream parity: the families' own modeling and generation code against mdmctl's import.

Needs a checkout of Fast-dLLM (github.com/NVlabs/Fast-dLLM: ``llada/model``, ``dream/model``),
LLaDA's ``generate.py`` (github.com/ML-GSAI/LLaDA), ``transformers`` and ``einops``; nothing of
them enters mdmctl. For each family: build a small random model with its own code (peaked
logits, so that argmax is not decided by rounding), save it with ``save_pretrained``, add a
tokenizer with the family's special tokens, ``mdmctl import`` it, then compare

- logits on random tokens with masks (Dream: its generation's shift applied to its logits);
- greedy generation (temperature 0): LLaDA's ``generate`` (blocks, low_confidence remasking)
  against ``sample_mdm`` with ``--block-length`` and ``--schedule llada``; Dream's
  ``diffusion_generate`` loop (``_sample``: ``maskgit_plus``, ``topk_margin``, ``entropy``)
  against ``--schedule dream`` with ``--remasking low-confidence``, ``margin``, ``entropy``.

Written against transformers 5, for which Dream's 4.4x-era code needs two shims (its 'default'
RoPE type restated; its loop called directly, as its generation config no longer builds).

mdmctl never predicts the mask token; the families' samplers can, so their logits get the mask
column at -inf here (a trained model never puts its mass there).

    python benchmarks/family_parity.py --fast-dllm ../Fast-dLLM --llada-generate ../LLaDA/generate.py
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from mdmctl.checkpoint import load_model
from mdmctl.interop import import_model
from mdmctl.sampling.decoding import Decoding
from mdmctl.sampling.mdm import sample_mdm

V, MASK, EOS = 320, 300, 301


def tokenizer(folder: Path, mask_name: str) -> None:
    vocab = {f"w{i}": i for i in range(V) if i not in (MASK, EOS)}
    vocab.update({mask_name: MASK, "<|endoftext|>": EOS})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([mask_name, "<|endoftext|>"])
    tok.save(str(folder / "tokenizer.json"))


def peaked(model: torch.nn.Module, head_name: str) -> None:
    """Norm weights off 1 and a 20x head: distinct, confident logits."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm" in name.split(".")[-2]:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            if name == head_name:
                p.mul_(20)


def banned(logits: torch.Tensor) -> torch.Tensor:
    return logits.index_fill(-1, torch.tensor([MASK], device=logits.device), float("-inf"))


def imported(tmp: Path, kind: str, mask_name: str, their_logits) -> torch.nn.Module:
    """Import the saved ``tmp/kind`` folder (a tokenizer added) and print the logits' largest
    difference from ``their_logits`` on random tokens with masks; returns mdmctl's model."""
    tokenizer(tmp / kind, mask_name)
    run = import_model(tmp / kind, tmp / f"{kind}-run")
    ours, *_ = load_model(str(run.step_dir), device="cpu", attention="sdpa")
    x = torch.randint(0, MASK, (2, 48), generator=torch.Generator().manual_seed(2))
    x[:, 10:30] = MASK
    with torch.no_grad():
        a, b = their_logits(x), ours(x)
    keep = torch.arange(V) != MASK
    print(f"{kind} logits: max |difference| {(a - b)[..., keep].abs().max():.2e} "
          f"(scale {a[..., keep].abs().max():.1f})")  # fmt: skip
    return ours


def llada(fast_dllm: Path, generate_py: Path, tmp: Path) -> None:
    sys.path.insert(0, str(fast_dllm))
    from llada.model.configuration_llada import LLaDAConfig
    from llada.model.modeling_llada import LLaDAModelLM

    cfg = LLaDAConfig(
        d_model=128, n_heads=4, n_kv_heads=4, n_layers=3, mlp_hidden_size=256, vocab_size=V,
        embedding_size=V, max_sequence_length=256, rope=True, rope_theta=500000.0,
        block_type="llama", activation_type="silu", layer_norm_type="rms", rms_norm_eps=1e-5,
        include_bias=False, weight_tying=False, attention_layer_norm=False, alibi=False,
        mask_token_id=MASK, eos_token_id=EOS, pad_token_id=EOS, init_device="cpu",
        flash_attention=False, use_cache=False,
    )  # fmt: skip
    cfg.use_cache = False  # newer transformers drop the keyword; LLaDA's forward reads it
    torch.manual_seed(0)
    theirs = LLaDAModelLM(cfg, init_params=True).eval()
    peaked(theirs, "model.transformer.ff_out.weight")
    theirs.save_pretrained(tmp / "llada")
    ours = imported(tmp, "llada", "<|mdm_mask|>", lambda x: banned(theirs(x).logits))

    spec = importlib.util.spec_from_file_location("llada_generate", generate_py)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    class Banned(torch.nn.Module):  # LLaDA's generate calls model(x, attention_mask=...).logits
        device = torch.device("cpu")

        def forward(self, x, attention_mask=None):
            return type("Out", (), {"logits": banned(theirs(x).logits)})

    for gen_length, steps, block in [(32, 32, 8), (32, 16, 32), (64, 32, 16)]:
        same = total = 0
        for seed in range(4):
            prompt = torch.randint(0, MASK, (1, 12), generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                ref = gen.generate(Banned(), prompt, steps=steps, gen_length=gen_length,
                                   block_length=block, temperature=0.0, mask_id=MASK)  # fmt: skip
            dec = Decoding(temperature=0.0, block_length=block, schedule="llada")
            fn = lambda x, d: ours(x, doc_ids=d)  # noqa: E731
            out = sample_mdm(fn, [prompt[0].tolist()], length=gen_length, steps=steps,
                             mask_id=MASK, pad_id=EOS, generator=torch.Generator(),
                             decoding=dec)  # fmt: skip
            same += int((out.tokens[0] == ref[0, 12:]).sum())
            total += gen_length
        print(f"LLaDA generate, gen {gen_length} steps {steps} block {block}: "
              f"{same}/{total} tokens equal over 4 prompts")  # fmt: skip


def default_rope_shim() -> None:
    """Dream's code (written for transformers 4.4x) looks up RoPE type 'default', which
    transformers 5 dropped: put back 4.x's ``_compute_default_rope_parameters``, restated."""
    from transformers import modeling_rope_utils

    def default(config, device=None, **kw):
        dim = config.hidden_size // config.num_attention_heads
        exps = torch.arange(0, dim, 2, dtype=torch.int64).float().to(device) / dim
        return 1.0 / (config.rope_theta**exps), 1.0

    modeling_rope_utils.ROPE_INIT_FUNCTIONS.setdefault("default", default)


def dream(fast_dllm: Path, tmp: Path) -> None:
    sys.path.insert(0, str(fast_dllm))
    default_rope_shim()
    from dream.model.configuration_dream import DreamConfig
    from dream.model.modeling_dream import DreamModel

    cfg = DreamConfig(
        vocab_size=V, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        mask_token_id=MASK, pad_token_id=EOS, bos_token_id=EOS, eos_token_id=EOS,
    )  # fmt: skip
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    theirs = DreamModel(cfg).eval()
    with torch.no_grad():  # Qwen2's biases start at zero: give them values
        for name, p in theirs.named_parameters():
            if name.endswith("proj.bias"):
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(3))
    peaked(theirs, "lm_head.weight")
    # As save_pretrained would write it (transformers 5's save_pretrained trips on Dream's
    # list-style _tied_weights_keys): the config, and the state dict as safetensors.
    (tmp / "dream").mkdir()
    theirs.config.save_pretrained(tmp / "dream")
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()},
              str(tmp / "dream" / "model.safetensors"))  # fmt: skip

    def shifted(x):  # the shift of Dream's generation
        a = theirs(x, "full").logits
        return banned(torch.cat([a[:, :1], a[:, :-1]], dim=1))

    ours = imported(tmp, "dream", "<|mask|>", shifted)
    for alg, remasking in [("maskgit_plus", "low-confidence"), ("topk_margin", "margin"),
                           ("entropy", "entropy")]:  # fmt: skip
        same = total = 0
        for seed in range(4):
            prompt = torch.randint(0, MASK, (1, 12), generator=torch.Generator().manual_seed(seed))
            # diffusion_generate's own loop (_sample), with the settings it would resolve:
            # transformers 5 cannot build its DreamGenerationConfig.
            settings = SimpleNamespace(
                output_history=False, return_dict_in_generate=False, max_length=12 + 32,
                mask_token_id=MASK, steps=16, eps=1e-3, alg=alg, alg_temp=0.0, temperature=0.0,
                top_p=None, top_k=None,
            )  # fmt: skip
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # its timing prints
                ref = theirs._sample(prompt, None, settings, lambda step, x, logits: x,
                                     lambda step, x, logits: banned(logits))  # fmt: skip
            dec = Decoding(temperature=0.0, schedule="dream", remasking=remasking)
            fn = lambda x, d: ours(x, doc_ids=d)  # noqa: E731
            out = sample_mdm(fn, [prompt[0].tolist()], length=32, steps=16, mask_id=MASK,
                             pad_id=EOS, generator=torch.Generator(), decoding=dec)  # fmt: skip
            same += int((out.tokens[0] == ref[0, 12:]).sum())
            total += 32
        print(f"Dream diffusion_generate, alg {alg} (mdmctl --remasking {remasking}), 32 tokens "
              f"in 16 steps: {same}/{total} tokens equal over 4 prompts")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast-dllm", type=Path, required=True, help="a Fast-dLLM checkout")
    ap.add_argument("--llada-generate", type=Path, required=True, help="LLaDA's generate.py")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        llada(args.fast_dllm, args.llada_generate, Path(tmp))
        dream(args.fast_dllm, Path(tmp))


if __name__ == "__main__":
    main()
