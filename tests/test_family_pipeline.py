"""Imported LLaDA and Dream checkpoints through the rest of mdmctl (issue 31): sampling with each
family's preset and every cache, the chat template, evaluation and the sampling benchmark. The
models are tiny and random (``family_runs`` in conftest.py): these tests check that each path
runs the family's model as it should, not what a trained one scores."""

from __future__ import annotations

import json

import pytest

from mdmctl.errors import CheckpointError
from mdmctl.sampling.chat import chat_template, encode_chat
from mdmctl.sampling.config import PRESETS, SampleConfig
from mdmctl.tokenizer import load_tokenizer

from .conftest import run


def _sample(step_dir, *args):
    r = run("sample", "--checkpoint", step_dir, "--json", "--device", "cpu", *args)
    return [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_preset_is_the_options_it_names(family_runs, kind):
    """--preset fills the options left out with the family's values; given ones win."""
    preset = PRESETS[kind]
    flags = []
    for name, value in preset.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    prompt = ["--prompt", "the cat sat on the mat .", "--seed", "3"]
    short = ["--length", "24", "--steps", "24"]
    by_preset = _sample(family_runs[kind], "--preset", kind, *prompt, *short)
    by_flags = _sample(family_runs[kind], *flags, *prompt, *short)
    assert by_preset == by_flags and len(by_preset[0]["token_ids"]) > 0
    c = SampleConfig.create(preset=kind)
    assert c.length == preset["length"] and c.steps == preset["steps"]
    assert c.decoding.remasking == preset["remasking"]
    assert SampleConfig.create(preset=kind, steps=7).steps == 7
    r = run("sample", "--checkpoint", family_runs[kind], "--preset", "mdlm", code=2)
    assert "--preset" in r.stderr


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual", "delayed"])
def test_caches_run_on_each_family(family_runs, kind, cache):
    """Every KV cache runs on both families (Dream's shifted logits included): every position
    generated, no mask left. (That the cached logits are the right ones is tested on the model:
    tests/test_model_families.py.)"""
    mask_id = json.loads((family_runs[kind].parents[1] / "config.json").read_text())["model"][
        "mask_id"
    ]
    common = ["--prompt", "the dog ran to the park .", "--length", "16", "--steps", "16",
              "--block-length", "4", "--temperature", "0", "--no-stop-at-eos"]  # fmt: skip
    cached = _sample(family_runs[kind], *common, "--cache", cache)[0]["token_ids"]
    assert len(cached) == 16 and mask_id not in cached


def test_chat_template_wraps_the_prompt(family_runs):
    step = family_runs["llada"]
    tok = load_tokenizer(step / "tokenizer.json")
    template, tokens = chat_template(step)
    ids = encode_chat(tok, template, tokens, "the cat <|eot_id|> sat")
    special = {n: tok.token_to_id(n) for n in ("<|startoftext|>", "<|start_header_id|>",
                                                  "<|end_header_id|>", "<|eot_id|>")}  # fmt: skip
    assert ids[0] == special["<|startoftext|>"] and ids[1] == special["<|start_header_id|>"]
    # the template's <|eot_id|> once (closing the user turn); the user's stays text (unknown)
    assert ids.count(special["<|eot_id|>"]) == 1
    assert ids[-1] == special["<|end_header_id|>"]
    assert tok.decode(ids[-2:-1]) == "assistant" and tok.decode(ids[2:3]) == "user"
    assert tok.decode(ids[4:8]) == "the cat <unk> sat"
    out = _sample(step, "--chat", "--prompt", "the cat sat", "--length", "8", "--steps", "8",
                  "--temperature", "0")  # fmt: skip
    assert out[0]["prompt"] == "the cat sat" and len(out[0]["token_ids"]) <= 8


def test_chat_needs_a_template(family_runs, ckpts):
    with pytest.raises(CheckpointError, match="no chat template"):
        chat_template(ckpts["mdm"])
    r = run("sample", "--checkpoint", ckpts["mdm"], "--chat", "--prompt", "a", code=4)
    assert "chat_template" in r.stderr


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_zero_shot_and_gsm8k_on_each_family(family_runs, kind, tmp_path):
    rows = [{"context": f"the cat sat on the {w}", "choices": [" mat .", " dog ran ."],
             "gold": i % 2} for i, w in enumerate(["mat", "boat", "sky", "roof"])]  # fmt: skip
    (tmp_path / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run("eval", "piqa", "--checkpoint", family_runs[kind], "--data", tmp_path,
            "--estimator", "mc-count", "--mc-samples", "8", "--json", "--device", "cpu",
            *(["--dtype", "bf16"] if kind == "dream" else []))  # fmt: skip
    (res,) = json.loads(r.stdout)
    assert res["n"] == 4 and res["estimator"] == "mc-count" and 0 <= res["metrics"]["acc"] <= 1
    problems = [{"question": "the cat sat on the mat .", "answer": "the dog ran . #### 4"}] * 2
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text("".join(json.dumps(p) + "\n" for p in problems))
    r = run("eval", "gsm8k", "--checkpoint", family_runs[kind], "--data", gsm, "--limit", "2",
            "--total-length", "48", "--steps", "8", "--json", "--device", "cpu")  # fmt: skip
    res = json.loads(r.stdout[r.stdout.index("{") :])
    assert res["n"] == 2 and 0 <= res["accuracy"] <= 1


def test_lm_eval_on_an_imported_family(family_runs, tmp_path):
    """lm-eval's multiple choice (LLaDA's mc-count estimator) and generation on Dream."""
    pytest.importorskip("lm_eval")
    data = tmp_path / "t.jsonl"
    rows = [{"question": "the cat sat on the", "choices": [" mat .", " park ."], "gold": 0,
             "answer": "mat"}] * 2  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    head = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\ndoc_to_text: '{{question}}'\n")  # fmt: skip
    (tasks / "f_mc.yaml").write_text(
        "task: f_mc\n" + head + "output_type: multiple_choice\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: gold\nmetric_list: [{metric: acc}]\n"
    )
    (tasks / "f_gen.yaml").write_text(
        "task: f_gen\n" + head + "output_type: generate_until\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs: {until: ['.'], max_gen_toks: 6}\nmetric_list: [{metric: exact_match}]\n"
    )
    r = run("eval", "lm-eval", "--checkpoint", family_runs["dream"], "--tasks", "f_mc,f_gen",
            "--include-path", tasks, "--model-args",
            "estimator=mc-dream,mc_num=4,steps=6,dtype=bf16",
            "--bootstrap-iters", "10", "--json")  # fmt: skip
    res = json.loads(r.stdout[r.stdout.index("{") :])
    assert 0 <= res["f_mc"]["acc,none"] <= 1
    assert res["f_gen"]["exact_match,none"] in (0.0, 0.5, 1.0)


@pytest.mark.slow  # about 30 decoding settings: 50 s on 2 cores
def test_bench_sample_on_an_imported_family(family_runs, tmp_path):
    rows = [{"prompt": "the cat sat on the", "completion": " mat ."}] * 3
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run("bench", "sample", "--mdm", family_runs["llada"], "--data-dir", tmp_path,
              "--split", "test.jsonl", "--batch-size", "2", "--latency-prompts", "1",
              "--no-compile", "--device", "cpu").stdout  # fmt: skip
    assert "sampling on test (batch 2)" in out and "accuracy (test)" in out


def test_bf16_weights_and_the_memory_refusal(family_runs, monkeypatch):
    from mdmctl import memory

    args = ["--prompt", "the cat sat", "--length", "8", "--steps", "8", "--temperature", "0"]
    out = _sample(family_runs["dream"], "--dtype", "bf16", *args)
    assert len(out[0]["token_ids"]) <= 8
    monkeypatch.setattr(memory, "available_bytes", lambda *a: 1000)
    r = run("sample", "--checkpoint", family_runs["dream"], *args, code=2)
    assert "parameters need" in r.stderr and "run it on a GPU" in r.stderr


def test_import_refuses_a_tokenizer_whose_mask_is_not_the_config_s(family_sources, tmp_path):
    import shutil

    from mdmctl.errors import CompatibilityError
    from mdmctl.interop.convert import import_model

    folder = tmp_path / "llada"
    shutil.copytree(family_sources["llada"], folder)
    conf = json.loads((folder / "config.json").read_text())
    conf["mask_token_id"] -= 1  # an ordinary token of this tokenizer
    (folder / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CompatibilityError, match="says mask_token_id"):
        import_model(folder, tmp_path / "run")


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize(
    "rules",
    [["--threshold", "0.5", "--suffix-window", "2", "--cfg", "0.5"],
     ["--factor", "1", "--cache", "dual", "--cache-window", "2"],
     ["--sampler", "ancestral", "--temperature", "1"]],
)  # fmt: skip
def test_decoding_rules_run_on_each_family(family_runs, kind, rules):
    """Parallel decoding, DPad's window, CFG and the ancestral sampler on both families."""
    common = ["--prompt", "the sky was full of", "--length", "12", "--steps", "12",
              "--no-stop-at-eos"]  # fmt: skip
    blocks = [] if rules[0] == "--sampler" else ["--block-length", "4"]
    out = _sample(family_runs[kind], *common, *blocks, *rules)[0]["token_ids"]
    assert len(out) == 12
