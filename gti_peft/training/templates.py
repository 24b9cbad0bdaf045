"""Paired text <-> token prompts for grounding: the paper's six templates, and tokenization with loss masks."""

from __future__ import annotations

import string
from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class GroundingTemplate:
    """One prompt/answer pattern; `{tokens}` is the new-token string, other fields come from the pair."""

    name: str
    prompt: str
    answer: str

    @property
    def fields(self) -> set[str]:
        return {f for text in (self.prompt, self.answer) for _, f, _, _ in string.Formatter().parse(text) if f}

    def applies_to(self, pair: dict) -> bool:
        return all(pair.get(f) for f in self.fields)

    def render(self, pair: dict) -> tuple[str, str]:
        return self.prompt.format(**pair), self.answer.format(**pair)


# The paper's six (adapted from LC-Rec): three directions text -> tokens, three tokens -> text.
PAPER_TEMPLATES = (
    GroundingTemplate("title_to_tokens", "Which item is called {title}?", "{tokens}"),
    GroundingTemplate("description_to_tokens", "Which item is described as follows? {description}", "{tokens}"),
    GroundingTemplate(
        "title_description_to_tokens", "What item is called {title} and described as {description}?", "{tokens}"
    ),
    GroundingTemplate("tokens_to_title", "Could you please tell me what item {tokens} is called?", "{title}"),
    GroundingTemplate("tokens_to_description", "Briefly describe item {tokens}.", "{description}"),
    GroundingTemplate(
        "tokens_to_title_description",
        "What is item {tokens} called, and how would you describe it?",
        "{title}. {description}",
    ),
)
# For pairs with a single `text` (a domain term's definition, a tool's documentation).
TEXT_TEMPLATES = (
    GroundingTemplate("text_to_tokens", "Which token is described as follows? {text}", "{tokens}"),
    GroundingTemplate("tokens_to_text", "Briefly describe {tokens}.", "{text}"),
)
DEFAULT_TEMPLATES = PAPER_TEMPLATES + TEXT_TEMPLATES


PROMPT_STYLES = ("chat", "chat_no_system", "plain")


def check_prompt_style(style, name: str = "prompt_style", allow_none: bool = False) -> None:
    """The one check of a prompt style: every config and call that takes one calls this (`name`: where it is set)."""
    if style in PROMPT_STYLES or (allow_none and style is None):
        return
    none = " (or None: the adapter's own)" if allow_none else ""
    raise ValueError(f"{name} must be one of {list(PROMPT_STYLES)}{none}, got {style!r}.")


def _chat(tokenizer, messages: list[dict], style: str, **kwargs) -> list[int]:
    if style == "chat_no_system":
        try:  # an empty system turn stops templates (SmolLM2, Llama 3) from adding their default system prompt
            messages = [{"role": "system", "content": ""}] + messages
            return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs))
        except Exception:  # templates without a system role (e.g. Gemma) raise: they add no default either
            messages = messages[1:]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs))


def _uses_chat(tokenizer, style: str) -> bool:
    check_prompt_style(style, "`prompt_style`")
    return style != "plain" and bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer, prompt: str, prompt_style: str = "chat") -> list[int]:
    """Token ids of one user turn, ready for the answer to be generated (what evaluation feeds the model).

    `prompt_style`: "chat" (the tokenizer's chat template, with its default system prompt), "chat_no_system"
    (an empty system turn: no default system prompt, ~16 fewer tokens on SmolLM2) or "plain" (`prompt\n`).
    Tokenizers without a chat template always use "plain".
    """
    if _uses_chat(tokenizer, prompt_style):
        return _chat(tokenizer, [{"role": "user", "content": prompt}], prompt_style, add_generation_prompt=True)
    return list(tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"])


def encode_prompt_answer(
    tokenizer, prompt: str, answer: str, max_length: int, prompt_style: str = "chat"
) -> dict[str, list[int]]:
    """Token ids of one prompt/answer turn with the loss on the answer only; the prompt part is exactly
    `encode_prompt(tokenizer, prompt, prompt_style)`, so training and evaluation see the same prompts."""
    prompt_ids = encode_prompt(tokenizer, prompt, prompt_style)
    answer_only = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    full_ids = prompt_ids + answer_only
    if _uses_chat(tokenizer, prompt_style):
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        chat_ids = _chat(tokenizer, turns, prompt_style)
        if chat_ids[: len(prompt_ids)] == prompt_ids:  # else a template that rewrites earlier turns
            full_ids = chat_ids
    full_ids = [i for i in full_ids if i is not None][:max_length]
    labels = [IGNORE_INDEX] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids) :]
    return {"input_ids": full_ids, "labels": labels, "attention_mask": [1] * len(full_ids)}


def render_examples(pairs, templates=DEFAULT_TEMPLATES) -> list[dict]:
    """Every (pair, template) combination whose fields the pair has: dicts with prompt, answer, template."""
    examples = []
    for pair in pairs:
        for template in templates:
            if template.applies_to(pair):
                prompt, answer = template.render(pair)
                examples.append({"prompt": prompt, "answer": answer, "template": template.name})
    return examples
