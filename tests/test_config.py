from __future__ import annotations

import pytest

from mdmctl.config import SMDM_SIZES, ModelConfig, TrainConfig, load_toml
from mdmctl.errors import ConfigError


@pytest.mark.parametrize("name", ["6M", "19M", "170M", "1028M", "2121M"])
def test_smdm_names_match_their_non_embedding_count(name):
    n = ModelConfig.from_name(name).n_params_non_embedding
    assert round(n / 1e6) == int(name[:-1])


def test_whole_smdm_family_present():
    assert len(SMDM_SIZES) == 30
    c = ModelConfig.from_name("170M")
    assert (c.n_layers, c.d_model, c.n_heads, c.d_ff, c.seq_len) == (18, 768, 12, 3072, 2048)


def test_override_field_by_field():
    c = ModelConfig.from_name("170M", seq_len=1024, n_layers=3)
    assert c.seq_len == 1024 and c.n_layers == 3 and c.d_model == 768


def test_unknown_size_suggests():
    with pytest.raises(ConfigError, match="did you mean '170M'"):
        ModelConfig.from_name("170m")


@pytest.mark.parametrize(
    ("name", "nearest"), [("20M", "19M"), ("200M", "206M"), ("1B", "1028M"), ("tinny", "tiny")]
)
def test_unknown_size_suggests_nearest_parameter_count(name, nearest):
    # '20M' is string-closest to '206M'; a user asking for 20M parameters means 19M.
    with pytest.raises(ConfigError, match=f"did you mean '{nearest}'"):
        ModelConfig.from_name(name)


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="n_heads"):
        ModelConfig.from_name("tiny", n_heads=3)


def test_unknown_override_key_suggests():
    with pytest.raises(ConfigError, match="did you mean 'n_layers'"):
        ModelConfig.from_name("tiny", n_layer=3)


def test_toml_unknown_key_and_type(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text("[train]\nwarmup = 10\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.warmup'; did you mean 'warmup_steps'"
    ):
        load_toml(p)
    p.write_text('[train]\nsteps = "10"\n')
    with pytest.raises(ConfigError, match="train.steps: expected int, got str"):
        load_toml(p)
    p.write_text("[trian]\nsteps = 10\n")
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_toml(p)
    p.write_text("[train]\nsteps = 10\n[model]\nd_model = 32\n")
    assert load_toml(p) == {"model": {"d_model": 32}, "train": {"steps": 10}}


def test_run_length_from_tokens_and_flops():
    m = ModelConfig.from_name("tiny", vocab_size=100, mask_id=99)
    assert TrainConfig(tokens=64 * 16 * 10, batch_size=16).resolve_steps(m) == 10
    per_step = 6 * m.n_params_non_embedding * 16 * 64
    assert TrainConfig(flops=per_step * 7.5, batch_size=16).resolve_steps(m) == 7
    with pytest.raises(ConfigError, match="smaller than one optimizer step"):
        TrainConfig(flops=per_step / 2, batch_size=16).resolve_steps(m)
    with pytest.raises(ConfigError, match="only one of"):
        TrainConfig(steps=3, tokens=5)


def test_train_config_rules():
    with pytest.raises(ConfigError, match="keep_last"):
        TrainConfig(keep_last=1)
    with pytest.raises(ConfigError, match="not divisible"):
        TrainConfig(batch_size=10, micro_batch_size=4)
    assert TrainConfig().resolve_warmup(1000) == 100
    assert TrainConfig().resolve_warmup(50) == 5


def test_config_imports_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; import mdmctl.config, mdmctl.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize(
    "make,field",
    [
        (lambda v: TrainConfig(lr=v), "train.lr"),
        (lambda v: TrainConfig(flops=v), "train.flops"),
        (lambda v: TrainConfig(eps=v), "train.eps"),
        (lambda v: TrainConfig(min_lr_ratio=v), "train.min_lr_ratio"),
        (lambda v: TrainConfig(weight_decay=v), "train.weight_decay"),
        (lambda v: TrainConfig(beta2=v), "train.beta2"),
        (lambda v: TrainConfig(grad_clip=v), "train.grad_clip"),
        (lambda v: TrainConfig(var_len_prob=v), "train.var_len_prob"),
        (lambda v: ModelConfig.from_name("tiny", rope_base=v), "model.rope_base"),
        (lambda v: ModelConfig.from_name("tiny", norm_eps=v), "model.norm_eps"),
    ],
)
def test_non_finite_config_fields_are_refused(make, field, value):
    with pytest.raises(ConfigError, match=f"{field}: must be a finite number"):
        make(value)


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda v: _sample_cfg(cfg=v), "--cfg"),
        (lambda v: _sample_cfg(temperature=v), "--temperature"),
        (lambda v: _finetune_cfg(cfg_dropout=v), "--cfg-dropout"),
        (lambda v: _finetune_cfg(val_fraction=v), "--val-fraction"),
        (lambda v: _finetune_cfg(epochs=v), "--epochs"),
    ],
)
def test_non_finite_options_are_refused(make, field):
    for value in (float("inf"), float("nan")):
        with pytest.raises(ConfigError, match=f"{field}: must be a finite number"):
            make(value)


def _sample_cfg(**kw):
    from mdmctl.sampling import SampleConfig

    return SampleConfig.create(**kw)


def _finetune_cfg(**kw):
    from mdmctl.config import FinetuneConfig

    return FinetuneConfig(init="x", data="y", **kw)


@pytest.mark.parametrize("literal", ["inf", "-inf", "nan"])
def test_toml_non_finite_literal_is_refused(tmp_path, literal):
    p = tmp_path / "run.toml"
    p.write_text(f"[train]\nlr = {literal}\n")
    with pytest.raises(ConfigError, match="run.toml: train.lr: must be a finite number"):
        load_toml(p)


def test_config_path_that_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; expected a TOML run file"):
        load_toml(tmp_path)
