"""Adding new tokens to a tokenizer (and, optionally, a model) in one call."""

from __future__ import annotations


def add_new_tokens(tokenizer, tokens: list[str], model=None, pad_to_multiple_of: int | None = None) -> list[int]:
    """Add `tokens` to `tokenizer` and return their ids, in order (the `new_token_ids` of `GTIConfig`).

    Tokens that the tokenizer already knows are refused: their rows are trained already, and GTI would overwrite
    them. With `model`, its embeddings are resized to the tokenizer (optional; `get_peft_model` resizes too).
    """
    if isinstance(tokens, str):
        raise ValueError(f"`tokens` must be a list of token strings, got the single string {tokens!r}.")
    if len(tokens) == 0:
        raise ValueError("`tokens` is empty: give at least one new token, e.g. ['<a_0>', '<a_1>'].")
    seen, duplicates = set(), []
    for token in tokens:
        if token in seen:
            duplicates.append(token)
        seen.add(token)
    if duplicates:
        raise ValueError(f"`tokens` lists {duplicates[:5]} more than once: each new token must appear once.")
    vocab = tokenizer.get_vocab()
    known = [t for t in tokens if t in vocab]
    if known:
        raise ValueError(
            f"`tokens` {known[:5]} already exist in the tokenizer (ids {[vocab[t] for t in known[:5]]}): GTI "
            "would overwrite trained rows. Use different token strings, or pass the existing ids to "
            "`GTIConfig(new_token_ids=...)` yourself if overwriting them is intended."
        )
    added = tokenizer.add_tokens(list(tokens))
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if added != len(tokens) or any(i is None or i < 0 for i in ids):
        raise RuntimeError(f"The tokenizer added {added} of {len(tokens)} tokens; ids {ids[:5]}...")
    if model is not None:
        size = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > size:
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    return ids


def check_tokenizer_fits(model, tokenizer) -> None:
    """Refuse a tokenizer with more tokens than `model` has embedding rows (another model's tokenizer)."""
    from .layer import NewTokenLayer

    embedding = model.get_input_embeddings()
    rows = (embedding.base_weight if isinstance(embedding, NewTokenLayer) else embedding.weight).shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"`tokenizer` has {len(tokenizer)} tokens but the model has {rows} embedding rows: it is another model's "
            "tokenizer (its extra tokens have no rows, and whoever loads the folder could not use it). Pass the "
            "tokenizer this adapter was trained with."
        )
