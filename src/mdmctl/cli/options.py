"""Every command-line option, defined once, in the groups that commands share.

An option that fills a config field takes its help, range and default from the field
(``config.option``): ``from_field(TrainConfig, "lr")``. A command lists the options it takes
(``@command(app, "sample", checkpoint=CHECKPOINT, **DECODING, ...)``) and receives their values
as one ``Options`` object; a recipe that wants another default or help says so at its use
(``CFG.but(default=0.8, help="Unsupervised CFG (SMDM: 0.8; ARM checkpoints: 0).")``). Choices
come from the library's ``Literal`` types, so a choice list exists once too. Nothing here imports
torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from mdmctl.config import FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from mdmctl.sampling.config import PRESETS, SampleConfig
from mdmctl.sampling.decoding import Decoding


@dataclasses.dataclass(frozen=True)
class Opt:
    """One option: its flags, the type Typer parses, default, help and range."""

    flags: tuple[str, ...]
    type: Any
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None

    def but(self, *, note: str = "", **changes: Any) -> Opt:
        """This option with other fields (a command's recipe default, its own help) and
        ``note`` appended to the help."""
        opt = dataclasses.replace(self, **changes)
        return dataclasses.replace(opt, help=f"{opt.help} {note}".strip())

    def typer_option(self) -> Any:
        ranges = {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}
        finite = float in typing.get_args(self.type) or self.type is float
        default = self.default
        enum = isinstance(self.type, type) and issubclass(self.type, Enum)
        if enum and default is not None and default is not ...:
            default = self.type(default)
        return typer.Option(
            default, *self.flags, help=self.help, callback=finite_value if finite else None,
            **ranges,
        )  # fmt: skip


def finite_value(value: float | None) -> float | None:
    """Typer callback for float options: ``inf`` and ``nan`` parse as floats and pass Typer's
    ``min=`` checks (``nan < 0`` is false), then fail far from the option (``--lr inf``)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def choice(values: tuple[str, ...] | Any, name: str = "Choice") -> type[Enum]:
    """A str Enum for a tuple of values or a ``Literal`` type (Typer lists its members)."""
    values = typing.get_args(values) or values
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolves the string annotations once per class


def _field_type(cls: type, name: str) -> Any:
    """The option type of a dataclass field: a ``Literal`` becomes a choice, ``X | None`` stays
    optional."""
    hint = _hints(cls)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if typing.get_origin(base) is typing.Literal:
        base = choice(base, name)
    return base | None if optional else base


def default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def from_field(
    cls: type,
    name: str,
    flag: str | None = None,
    *,
    given_default: bool = False,
    said: str | None = None,
    help: str | None = None,
    **changes: Any,
) -> Opt:
    """The option that fills ``cls.name``, from the field's ``config.option`` metadata (a field
    without a default makes a required option).

    ``given_default``: the option defaults to None (a value left out is not given, so a
    ``--config`` file or the library decides) and its help names the default instead (``said``,
    where a command's default is not the field's); ``help`` replaces the field's help text."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    meta, typ = f.metadata, _field_type(cls, name)
    default = ... if f.default is dataclasses.MISSING else f.default
    help_text = meta["help"] if help is None else help
    if given_default:
        said = said or meta.get("default_help", default_text(default))
        help_text = f"{help_text} Default: {said}."
        default = None
        typ = typ if type(None) in typing.get_args(typ) else typ | None
    elif "default_help" in meta:
        help_text = f"{help_text} Default: {meta['default_help']}."
    opt = Opt((flag or f"--{name.replace('_', '-')}",), typ, default, help_text,
              meta.get("min"), meta.get("max"))  # fmt: skip
    return opt.but(**changes) if changes else opt


class Options(types.SimpleNamespace):
    """A command's option values by parameter name (choices as plain strings), and ``given``:
    the names the user set (not left at their default)."""

    given: frozenset[str]

    def pick(self, *names: str) -> dict[str, Any]:
        return {n: getattr(self, n) for n in names}


def command(group: typer.Typer, name: str | None = None, **opts: Opt | Any) -> Callable:
    """Register ``body(o: Options)`` as a command of ``group`` taking ``opts`` (in this order;
    a value that is not an ``Opt`` is a ready ``typer.Argument``)."""

    def register(body: Callable[[Options], None]) -> Callable[[Options], None]:
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                    annotation=typer.Context)]  # fmt: skip
        annotations: dict[str, Any] = {"ctx": typer.Context}
        for pname, o in opts.items():
            info, typ = (o.typer_option(), o.type) if isinstance(o, Opt) else o
            params.append(inspect.Parameter(pname, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            default=info, annotation=typ))  # fmt: skip
            annotations[pname] = typ

        @functools.wraps(body)
        def run(ctx: typer.Context, **values: Any) -> None:
            plain = {k: v.value if isinstance(v, Enum) else v for k, v in values.items()}
            # By name: newer Typer releases carry their own copy of click and of its enum.
            left = ("DEFAULT", "DEFAULT_MAP")
            given = frozenset(k for k in values if ctx.get_parameter_source(k).name not in left)
            body(Options(**plain, given=given))

        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = annotations
        group.command(name)(run)
        return body

    return register


def argument(typ: Any, default: Any, help: str) -> tuple[Any, Any]:
    """A positional argument for ``command``: (its typer.Argument, its type)."""
    return typer.Argument(default, help=help), typ


# --- runtime: where and how a model runs ---------------------------------------------------
CHECKPOINT = Opt(("--checkpoint",), Path | None, None,
                 "Step dir, or run dir (its newest valid checkpoint). Default: the newest run "
                 "under runs/.")  # fmt: skip
DEVICE = from_field(RunConfig, "device")
DTYPE = from_field(RunConfig, "dtype", type=str)
ATTENTION = from_field(RunConfig, "attention")
SEED = Opt(("--seed",), int, 0, "Random seed.")
RUNTIME = {"device": DEVICE, "attention": ATTENTION}


def json_out(help: str) -> dict[str, Opt]:
    return {"json_out": Opt(("--json",), bool, False, help)}


def data(help: str) -> Opt:
    """An evaluation's ``--data``: a file or folder, or none (each command says its default)."""
    return Opt(("--data",), str | None, None, help)


def limit(what: str) -> Opt:
    return Opt(("--limit",), int | None, None, f"First N {what}. Default: all.", min=1)


def out(help: str, typ: Any = Path | None, default: Any = None) -> Opt:
    return Opt(("--out",), typ, default, help)


# --- training: pretrain and finetune ---------------------------------------------------------
def train_options(*names: str, **changes: dict[str, Any]) -> dict[str, Opt]:
    """TrainConfig's options by field name, each defaulting to None (not given: the library
    decides), with per-command ``changes``."""
    return {n: from_field(TrainConfig, n, given_default=True, **changes.get(n, {}))
            for n in names}  # fmt: skip


OPTIMIZER = ("micro_batch_size", "lr", "warmup_steps")
CADENCE = ("val_every", "save_every", "keep_last")
RUN = {
    "seed": from_field(TrainConfig, "seed", given_default=True),
    "device": DEVICE,
    "dtype": DTYPE,
    "attention": ATTENTION,
    "parallel": from_field(TrainConfig, "parallel", given_default=True),
    "activation_checkpointing": from_field(
        TrainConfig, "activation_checkpointing",
        "--activation-checkpointing/--no-activation-checkpointing", given_default=True,
    ),
    "loss_head": from_field(TrainConfig, "loss_head", given_default=True),
    "compile": from_field(TrainConfig, "compile", "--compile/--no-compile", given_default=True),
    "resume": Opt(("--resume",), str, "auto",
                  "auto (continue the run in --out if any), never, or a checkpoint path."),
    "overwrite": Opt(("--overwrite",), bool, False, "Delete an existing run in --out first."),
    **json_out("Print the summary as JSON on stdout."),
}  # fmt: skip
MODEL_SHAPE = {n: from_field(ModelConfig, n, given_default=True)
               for n in ("seq_len", "n_layers", "d_model", "n_heads", "d_ff")}  # fmt: skip
SFT = {n: from_field(FinetuneConfig, n) for n in (
    "cfg_dropout", "format", "prompt_field", "response_field", "val_fraction", "epochs",
)}  # fmt: skip
# Plain strings, checked by FinetuneConfig (its messages name the rule).
SFT_DATA = {n: from_field(FinetuneConfig, n, type=str) for n in ("overlong", "batching", "pad_to")}


# --- generation and decoding: sample, eval gsm8k, eval reverse-curse -------------------------
STEPS = Opt(("--steps",), int | None, None, "Denoising steps (MDM).", min=1)
SAMPLER = from_field(Decoding, "sampler")
TEMPERATURE = from_field(Decoding, "temperature")
CFG = from_field(Decoding, "cfg")
GEN_DTYPE = from_field(SampleConfig, "dtype")
GEN_BATCH = from_field(SampleConfig, "batch_size")
DECODING = {
    **{n: from_field(Decoding, n) for n in ("remasking", "schedule", "block_length", "threshold",
                                             "factor", "factor_rule", "top_k", "top_p",
                                             "min_length")},
    "cache": from_field(SampleConfig, "cache"),
    "cache_window": from_field(SampleConfig, "cache_window"),
    "suffix_window": from_field(Decoding, "suffix_window"),
    "compile": from_field(SampleConfig, "compile"),
    "cuda_graphs": from_field(SampleConfig, "cuda_graphs"),
}  # fmt: skip
RECIPE = ("cfg", "steps", "sampler")
"""The generation options a recipe sets (``eval gsm8k``'s CFG 0.1): an ARM checkpoint drops
them silently when the user left them as they are (``for_objective``)."""


def sample_config(o: Options, *, recipe: bool = True, **fixed: Any) -> SampleConfig:
    """The SampleConfig of a generating command's options (``STEPS``, ``SAMPLER``,
    ``TEMPERATURE``, ``CFG``, ``DECODING``, ...): one mapping for ``sample``, ``eval gsm8k`` and
    ``eval reverse-curse``. ``recipe``: the command's defaults are a recipe's (``RECIPE``)."""
    names = [n for n in ("steps", "sampler", "temperature", "cfg", "seed", "batch_size",
                         "device", "attention", "dtype", *DECODING) if hasattr(o, n)]  # fmt: skip
    values = {**o.pick(*names), **fixed}
    if getattr(o, "preset", None):  # what the user left at its default, the preset sets
        values = {k: v for k, v in values.items() if k in o.given or k not in PRESETS[o.preset]}
        values["preset"] = o.preset
    checkpoint = getattr(o, "checkpoint", None)
    return SampleConfig.create(
        checkpoint=str(checkpoint) if checkpoint else None,
        defaults=frozenset(
            (n, values[n]) for n in RECIPE if recipe and n in values and n not in o.given
        ),
        **values,
    )
