"""Chat templates for tokenizers that have none, and the template the sft
stage gives its tokenizer (a shipped one by name, or a .jinja file).

Special markers are plain text (no tokens are added to the vocabulary, so no
embedding resize is needed); every turn ends with the tokenizer's EOS token
so generation stops after the assistant's answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipe_runner import StageError

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + eos_token + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token + '\n' }}"
        "{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token + '\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}

#: the suffixes a chat template file may have
TEMPLATE_FILE_SUFFIXES = (".jinja", ".j2")


def names_a_template(chat_template: str) -> bool:
    """True when the setting is a shipped template's name or a template file's path (checked at plan time)."""
    return chat_template in CHAT_TEMPLATES or chat_template.endswith(TEMPLATE_FILE_SUFFIXES)


def set_chat_template(tok: Any, chat_template: str | None, fmt: str) -> None:
    """Give the tokenizer the recipe's chat template (a shipped name or a
    .jinja file); chat data with neither a set template nor the tokenizer's
    own is a StageError."""
    if chat_template:
        tok.chat_template = _template_text(chat_template)
    elif fmt == "chat" and not getattr(tok, "chat_template", None):
        raise StageError(
            "format 'chat': the tokenizer has no chat template; set chat_template to one of "
            f"{', '.join(CHAT_TEMPLATES)} or a .jinja file"
        )


def _template_text(chat_template: str) -> str:
    if chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[chat_template]
    path = Path(chat_template)
    if not path.is_file():
        raise StageError(
            f"chat_template: {chat_template!r} is not a shipped template "
            f"({', '.join(CHAT_TEMPLATES)}) nor an existing .jinja file"
        )
    return path.read_text(encoding="utf-8")
