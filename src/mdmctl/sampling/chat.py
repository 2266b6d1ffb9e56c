"""Chat templates: an instruct model's prompt format, as its ``tokenizer_config.json`` ships it.

An imported LLaDA or Dream keeps its ``tokenizer_config.json`` in the run's import record
(``interop.convert``); ``sample --chat`` wraps each prompt in its ``chat_template`` as one user
turn with the generation prompt added, as transformers' ``apply_chat_template(messages,
add_generation_prompt=True)`` does: a sandboxed Jinja environment with ``trim_blocks`` and
``lstrip_blocks``, ``raise_exception``, and the special tokens (``bos_token``, ``eos_token``...)
as strings.

The template's own special tokens are encoded as special tokens; the user's text is encoded
literally (a typed ``<|eot_id|>`` stays text), so a prompt cannot forge a turn. Jinja comes with
torch (one of its requirements), so it is no new dependency.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from mdmctl.errors import CheckpointError, ConfigError
from mdmctl.interop.files import import_record
from mdmctl.tokenizer import encode_literal

SENTINEL = "\x00mdmctl-user-turn\x00"
"""Stands for the user's text while the template renders: the text around it is the
template's, encoded with its special tokens; the user's text is encoded literally."""


def chat_template(step_dir: Path) -> tuple[str, dict[str, str]]:
    """The checkpoint's chat template and its special-token strings, from the run's import
    record (``runs/NAME/config.json``). CheckpointError when it has none."""
    conf = import_record(step_dir).get("tokenizer_config") or {}
    template = conf.get("chat_template")
    if isinstance(template, list):  # transformers' named templates: the "default" one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        raise CheckpointError(
            f"{step_dir}: no chat template; --chat needs a checkpoint imported from a folder "
            "whose tokenizer_config.json has a chat_template (an instruct model)"
        )
    tokens = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = conf.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            tokens[name] = value
    return template, tokens


def render(template: str, tokens: dict[str, str], user: str) -> str:
    """The template applied to one user turn, with the generation prompt."""
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - torch requires jinja2
        raise ConfigError("--chat needs the jinja2 package (installed with torch)") from None

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=[{"role": "user", "content": user}], add_generation_prompt=True, **tokens
        )
    except TemplateError as e:
        raise ConfigError(f"--chat: the checkpoint's chat template failed: {e}") from None


def encode_chat(tok: Tokenizer, template: str, tokens: dict[str, str], user: str) -> list[int]:
    """Token ids of ``user`` as one chat turn: the template's text with its special tokens, the
    user's text literally."""
    text = render(template, tokens, SENTINEL)
    parts = text.split(SENTINEL)
    if len(parts) != 2:  # the template changed the content: render it as transformers would
        return tok.encode(render(template, tokens, user), add_special_tokens=False).ids
    before, after = (tok.encode(p, add_special_tokens=False).ids if p else [] for p in parts)
    return before + encode_literal(tok, user) + after


def chat_ids(tok: Tokenizer, step_dir: Path, prompts: list[str]) -> list[list[int]]:
    """Each prompt as one user turn of the checkpoint's chat template."""
    template, tokens = chat_template(step_dir)
    return [encode_chat(tok, template, tokens, p) for p in prompts]
