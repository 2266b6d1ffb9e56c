"""lm-evaluation-harness model ``mdmctl``: the whole ``LM`` interface for MDM and ARM checkpoints.

    import mdmctl.evaluation.lm_eval_adapter  # registers the model
    lm_eval.simple_evaluate(model="mdmctl", model_args="checkpoint=runs/x,cfg=0.5", tasks=[...])

or ``mdmctl eval lm-eval --tasks ...``. Model arguments: ``checkpoint``, ``estimator`` (mc |
mc-count | mc-dream | chain-rule), ``mc_num`` (MC samples), ``cfg``, ``greedy`` (compute ``is_greedy`` for MDMs),
``batch_size``, ``seed``, ``device``, ``attention``, ``dtype`` (fp32 | bf16), and for generation ``steps``, ``sampler``,
``temperature``, ``max_gen_toks``, ``remasking``, ``block_length``, ``threshold``, ``factor``,
``top_k``, ``top_p``, ``min_length``, ``cache``, ``cache_window``, ``suffix_window``,
``compile``, ``cuda_graphs`` (as ``mdmctl sample``'s options; an ARM refuses the MDM-only ones
that would change its output, and warns that ``steps`` and ``sampler`` do not apply to it).

- ``loglikelihood``: the likelihood engine (``evaluation.likelihood``), lm-eval's tokenisation of
  the pair; ``is_greedy`` from the greedy check (MDM) or next-token argmax (ARM).
- ``loglikelihood_rolling``: the document in consecutive windows. ARM: exact, each window
  conditioned on the tokens before it that fit (lm-eval's rolling windows). MDM: the sum of each
  window's ELBO (``mc``) or chain rule, windows scored on their own: a **bound** (``mc``) on the
  log-likelihood, not the exact value; lm-eval's word/byte perplexities are then bounds too.
- ``generate_until``: the mdmctl samplers (MDM: ``steps`` denoising steps over ``max_gen_toks``
  positions, CFG; ARM: KV cache), cut at the first stop string of ``until``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mdmctl.errors import ConfigError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # the optional extra is missing
    raise ConfigError(
        "lm-eval is not installed; install the extra: pip install 'mdmctl[eval]'"
    ) from e

from mdmctl.evaluation.likelihood import ScoreConfig, encode_pair, loglikelihood


def _bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


@register_model("mdmctl")
class MdmctlLM(LM):
    def __init__(
        self,
        checkpoint: str | None = None,
        estimator: str = "mc",
        mc_num: int = 128,
        cfg: float = 0.0,
        greedy: bool | str = True,
        batch_size: int | str | None = 32,
        seed: int = 0,
        device: str | None = "auto",
        attention: str = "auto",
        dtype: str = "fp32",
        steps: int | None = None,
        sampler: str = "confidence",
        temperature: float = 0.0,
        max_gen_toks: int = 256,
        remasking: str = "low-confidence",
        schedule: str | None = None,
        block_length: int | str | None = None,
        threshold: float | str | None = None,
        factor: float | str | None = None,
        factor_rule: str = "fast-dllm",
        top_k: int | str | None = None,
        top_p: float | str | None = None,
        cache: str = "none",
        cache_window: int | str = 0,
        suffix_window: int | str | None = None,
        compile: bool | str = False,
        cuda_graphs: bool | str = False,
        min_length: int | str = 0,
        max_batch_size: int | None = None,  # lm-eval passes it to every model; batches are fixed
    ) -> None:
        super().__init__()
        from mdmctl.checkpoint import load_model
        from mdmctl.sampling import SampleConfig, for_objective

        auto = batch_size is None or str(batch_size).startswith("auto")
        bs = 32 if auto else int(batch_size)
        self.score_cfg = ScoreConfig(
            estimator=estimator,
            mc_samples=int(mc_num),
            cfg=float(cfg),
            greedy=_bool(greedy),
            batch_size=bs,
            seed=int(seed),
        )
        self.model, self.tok, self.info, self.step_dir, self._device = load_model(
            checkpoint, device or "auto", attention, None, dtype
        )
        self.mdm = self.model.cfg.objective == "mdm"
        if not self.mdm:
            self.score_cfg = ScoreConfig(batch_size=bs, seed=int(seed))
        self.temperature, self.max_gen_toks = float(temperature), int(max_gen_toks)
        # generate_until's settings (docs/cli.md, "mdmctl sample"; model_args are strings),
        # checked once here: an ARM refuses MDM-only ones that would change its output and
        # warns about steps / sampler.
        num = lambda v, kind: None if v in (None, "", "None") else kind(v)  # noqa: E731
        decoding = SampleConfig.create(
            steps=num(steps, int) or None,
            sampler=sampler,
            temperature=self.temperature,
            cfg=float(cfg),
            seed=int(seed),
            batch_size=bs,
            remasking=remasking,
            schedule=num(schedule, str),
            block_length=num(block_length, int),
            threshold=num(threshold, float),
            factor=num(factor, float),
            factor_rule=factor_rule,
            top_k=num(top_k, int),
            top_p=num(top_p, float),
            min_length=num(min_length, int) or 0,
            cache=cache,
            cache_window=num(cache_window, int) or 0,
            suffix_window=num(suffix_window, int),
            compile=_bool(compile),
            cuda_graphs=_bool(cuda_graphs),
        )
        self.gen_cfg = for_objective(decoding, self.model.cfg.objective)

    def _encode(self, text: str) -> list[int]:
        from mdmctl.tokenizer import encode_literal

        return encode_literal(self.tok, text) if text else []

    # ------------------------------------------------------------------------ loglikelihood
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for context, continuation in (r.args for r in requests):
            if context:
                pairs.append(encode_pair(self.tok, context, continuation))
            else:  # an empty context: the engine conditions an ARM on eos, an MDM on nothing
                pairs.append(([], self._encode(continuation)))
        scores = loglikelihood(
            self.model, pairs, self.score_cfg, eos_id=self.info.eos_id, device=self._device
        )
        return [(s.logprob, bool(s.is_greedy)) for s in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        L = self.model.cfg.seq_len
        # ARM: windows of L - 1 tokens (eos or one earlier token in front); the engine keeps as
        # much of the preceding text as fits. MDM: windows of L tokens, each on its own.
        size = L - 1 if not self.mdm else L
        pairs, owner = [], []
        for i, (text,) in enumerate(r.args for r in requests):
            ids = self._encode(text)
            for s in range(0, len(ids), size):
                ctx = ids[max(0, s - (L - 1)) : s] if not self.mdm else []
                pairs.append((ctx, ids[s : s + size]))
                owner.append(i)
        cfg = dataclasses.replace(self.score_cfg, greedy=False)
        scores = loglikelihood(self.model, pairs, cfg, eos_id=self.info.eos_id, device=self._device)
        out = [0.0] * len(requests)
        for i, s in zip(owner, scores, strict=True):
            out[i] += s.logprob
        return out

    # ------------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from mdmctl.sampling import generate

        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            _, kw = r.args
            kw = dict(kw or {})
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            n = int(kw.get("max_gen_toks", self.max_gen_toks))
            temp = float(kw.get("temperature", self.temperature) or 0.0)
            if kw.get("do_sample") is False:
                temp = 0.0
            groups.setdefault((n, temp, tuple(until)), []).append(i)
        L = self.model.cfg.seq_len
        for (n, temp, until), idx in groups.items():
            n = min(n, L - 1)
            ids = [self._encode(requests[i].args[0])[-(L - n) :] for i in idx]
            steps = self.gen_cfg.steps or n
            scfg = self.gen_cfg.evolve(length=n, steps=steps, temperature=temp)
            g = generate(
                self.model, self.tok, self.info, [""] * len(idx), scfg, self._device, prompt_ids=ids
            )
            for i, text in zip(idx, g.texts, strict=True):
                cut = min((text.find(s) for s in until if s and s in text), default=len(text))
                out[i] = text[:cut]
        return [o or "" for o in out]
