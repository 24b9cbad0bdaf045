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


def encode_prompt_answer(tokenizer, prompt: str, answer: str, max_length: int) -> dict[str, list[int]]:
    """Token ids of one prompt/answer turn with the loss on the answer only.

    Uses the tokenizer's chat template when it has one, else `prompt\\nanswer<eos>`.
    """
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        prompt_ids = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False)
        full_ids = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": answer}], tokenize=True, return_dict=False
        )
        if full_ids[: len(prompt_ids)] != prompt_ids:  # a template that rewrites earlier turns
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            full_ids = prompt_ids + answer_ids
    else:
        prompt_ids = tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        full_ids = prompt_ids + tokenizer(answer, add_special_tokens=False)["input_ids"] + eos
    full_ids = list(full_ids)[:max_length]
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
