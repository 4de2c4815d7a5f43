"""ChatML, the chat template SmolLM2 carries in its GGUF metadata.

Rendering in Python (rather than through the tokenizer's template engine)
keeps prompts identical across backends (in process and Triton) and lets the
context builder count tokens for exactly the text the model sees.
"""

from __future__ import annotations

from collections.abc import Sequence

from antiphon.inference.llm import ChatMessage

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
_SPECIAL = (IM_START, IM_END, "<|endoftext|>")


def sanitize(text: str) -> str:
    """Remove control-token strings so user text cannot forge turns (prompt injection)."""
    for token in _SPECIAL:
        text = text.replace(token, "")
    return text


def render_chatml(messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
    parts = [f"{IM_START}{m.role}\n{sanitize(m.content)}{IM_END}\n" for m in messages]
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)
