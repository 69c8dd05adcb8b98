"""Token ids -> display strings. Token strings are hostile input: they may hold
partial UTF-8, control, bidi and zero-width characters, markup, or be 10,000
characters long. Here they become visible, bounded plain text; escaping for
HTML/JSON happens in the renderer."""

from __future__ import annotations

from sitegen.text import display_text


def raw_token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token id decoded alone, as the tokenizer gives it (exports: NeuronRecord tokens)."""
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Display string of each token id (alone, without its neighbours)."""
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    out = []
    for i in ids:
        text = tokenizer.decode([i], clean_up_tokenization_spaces=False)
        if "\ufffd" in text:  # a partial UTF-8 / byte-fallback piece: show its raw name
            text = str(tokenizer.convert_ids_to_tokens(i))
        out.append(display_text(text))
    return out
