"""Prefix trie over the semantic-ID token sequences of an item catalog, for constrained decoding."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

import torch


class ItemTrie:
    """Trie of item token sequences: which tokens may follow a prefix, and which item a sequence spells.

    Every path from the root to a leaf is exactly one item's semantic ID. No item's sequence may be a prefix of
    another's, so reaching a leaf ends an item: decoding needs no EOS token. Sequences may differ in length.

    Args:
        item_tokens (`Mapping[Hashable, Sequence[int]]`):
            Item -> its token ids (e.g. `{"movie_1": [49152, 49170, 49201]}`).

    Example:

    ```python
    >>> trie = ItemTrie({"a": [5, 7], "b": [5, 8], "c": [6, 1, 2]})
    >>> trie.allowed(())
    [5, 6]
    >>> trie.allowed((5,))
    [7, 8]
    >>> trie.item_for([5, 8]), trie.is_complete((5, 8))
    ('b', True)
    ```
    """

    def __init__(self, item_tokens: Mapping[Hashable, Sequence[int]]):
        if not isinstance(item_tokens, Mapping) or len(item_tokens) == 0:
            raise ValueError(
                f"`item_tokens` must be a non-empty mapping item -> token ids, got {type(item_tokens).__name__} "
                f"of length {len(item_tokens) if hasattr(item_tokens, '__len__') else '?'}: pass at least one item."
            )
        self._children: list[dict[int, int]] = [{}]  # node id -> {token id: child node id}; node 0 is the root
        self._node_item: list[Hashable | None] = [None]
        self._sequences: dict[Hashable, tuple[int, ...]] = {}
        for item, tokens in item_tokens.items():
            self._insert(item, tokens)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._exclusion_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _insert(self, item: Hashable, tokens: Sequence[int]) -> None:
        sequence = tuple(int(t) for t in tokens)
        if len(sequence) == 0 or any(t < 0 for t in sequence):
            raise ValueError(
                f"Item {item!r} has token ids {list(sequence)}: each item needs a non-empty sequence of "
                "non-negative token ids."
            )
        node = 0
        for token in sequence:
            if self._node_item[node] is not None:
                raise ValueError(
                    f"The semantic ID of item {self._node_item[node]!r} is a prefix of item {item!r}'s "
                    f"{list(sequence)}: no item's sequence may be a prefix of another's (add a suffix level)."
                )
            child = self._children[node].get(token)
            if child is None:
                child = len(self._children)
                self._children[node][token] = child
                self._children.append({})
                self._node_item.append(None)
            node = child
        if self._node_item[node] is not None:
            raise ValueError(
                f"Items {self._node_item[node]!r} and {item!r} share the token sequence {list(sequence)}: "
                "semantic IDs must be unique (add a disambiguating level)."
            )
        if self._children[node]:
            raise ValueError(
                f"Item {item!r}'s sequence {list(sequence)} is a prefix of item {self._first_item_below(node)!r}'s: "
                "no item's sequence may be a prefix of another's (add a suffix level)."
            )
        self._node_item[node] = item
        self._sequences[item] = sequence

    def extend(self, item_tokens: Mapping[Hashable, Sequence[int]]) -> None:
        """Add items (a growing catalog); on a bad sequence nothing is added and the error says why."""
        saved = ([dict(c) for c in self._children], list(self._node_item), dict(self._sequences))
        try:
            for item, tokens in item_tokens.items():
                if item in self._sequences:
                    raise ValueError(f"Item {item!r} is already in the trie: add only new items.")
                self._insert(item, tokens)
        except ValueError:
            self._children, self._node_item, self._sequences = saved
            raise
        self._tables.clear()
        self._exclusion_tables.clear()

    def _first_item_below(self, node: int) -> Hashable:
        while self._node_item[node] is None:
            node = next(iter(self._children[node].values()))
        return self._node_item[node]

    def _walk(self, prefix: Iterable[int]) -> int | None:
        node = 0
        for token in prefix:
            node = self._children[node].get(int(token))
            if node is None:
                return None
        return node

    def __len__(self) -> int:
        return len(self._sequences)

    def __contains__(self, item: Hashable) -> bool:
        return item in self._sequences

    @property
    def items(self) -> list[Hashable]:
        """The items, in insertion order."""
        return list(self._sequences)

    @property
    def sequences(self) -> dict[Hashable, tuple[int, ...]]:
        """Item -> its token ids."""
        return dict(self._sequences)

    @property
    def max_length(self) -> int:
        """Length of the longest item sequence (the `max_new_tokens` of a constrained `generate`)."""
        return max(len(s) for s in self._sequences.values())

    @property
    def token_ids(self) -> list[int]:
        """Sorted ids of every token used by some item."""
        return sorted({t for s in self._sequences.values() for t in s})

    def allowed(self, prefix: Sequence[int] = ()) -> list[int]:
        """Token ids that may follow `prefix`; empty when `prefix` is complete or leads to no item."""
        node = self._walk(prefix)
        return [] if node is None else list(self._children[node])

    def is_complete(self, prefix: Sequence[int]) -> bool:
        """Whether `prefix` spells a whole item (a leaf: decoding of this item is finished)."""
        node = self._walk(prefix)
        return node is not None and self._node_item[node] is not None

    def item_for(self, sequence: Sequence[int]) -> Hashable | None:
        """The item whose token ids are exactly `sequence`, or `None`."""
        node = self._walk(sequence)
        return None if node is None else self._node_item[node]

    def find_prefix_item(self, sequence: Sequence[int]) -> Hashable | None:
        """The item whose token ids start `sequence` (trailing tokens such as padding ignored), or `None`."""
        node = 0
        for token in sequence:
            node = self._children[node].get(int(token))
            if node is None:
                return None
            if self._node_item[node] is not None:
                return self._node_item[node]
        return None

    def tensors(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dense tables for vectorized decoding, cached per device.

        Nodes are renumbered inner nodes first (the root stays 0), and only inner nodes get a table row: leaves,
        one per item, cost one entry of `node_item` (a 1M-item catalog needs tables for its ~35k prefixes only).

        Returns:
            `child_tokens` (`(inner_nodes, max_children)`, padded with 0), `child_nodes` (same shape, padded with
            -1) and `node_item` (`(num_nodes,)`: index into [`ItemTrie.items`] at leaves, -1 elsewhere).
        """
        device = torch.device(device if device is not None else "cpu")
        if device not in self._tables:
            renumber, inner, leaves = self._renumbering()
            width = max(len(self._children[node]) for node in inner)
            child_tokens = torch.zeros(len(inner), width, dtype=torch.long)
            child_nodes = torch.full((len(inner), width), -1, dtype=torch.long)
            for row, node in enumerate(inner):
                children = self._children[node]
                child_tokens[row, : len(children)] = torch.tensor(list(children.keys()))
                child_nodes[row, : len(children)] = renumber[torch.tensor(list(children.values()))]
            index = {item: i for i, item in enumerate(self._sequences)}
            node_item = torch.full((len(self._children),), -1, dtype=torch.long)
            node_item[renumber[torch.tensor(leaves)]] = torch.tensor([index[self._node_item[n]] for n in leaves])
            self._tables[device] = (child_tokens.to(device), child_nodes.to(device), node_item.to(device))
        return self._tables[device]

    def _renumbering(self) -> tuple[torch.Tensor, list[int], list[int]]:
        """Old node id -> new one (inner nodes first, the root stays 0), and the inner and leaf nodes (old ids)."""
        inner = [node for node, children in enumerate(self._children) if children]
        leaves = [node for node, children in enumerate(self._children) if not children]
        renumber = torch.empty(len(self._children), dtype=torch.long)
        renumber[torch.tensor(inner + leaves)] = torch.arange(len(self._children))
        return renumber, inner, leaves

    def exclusion_tables(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for leaving items out of a search, in the node numbering of [`ItemTrie.tensors`], cached per device.

        Returns:
            `item_paths` (`(items, max_length)`: the nodes below the root on each item's path, its leaf last,
            padded with -1; rows in [`ItemTrie.items`] order) and `leaf_counts` (`(num_nodes,)`: items below each
            node, 1 at a leaf). A node whose every item is left out is a dead branch.
        """
        device = torch.device(device if device is not None else "cpu")
        if device not in self._exclusion_tables:
            renumber, _, _ = self._renumbering()
            item_paths = torch.full((len(self._sequences), self.max_length), -1, dtype=torch.long)
            for row, sequence in enumerate(self._sequences.values()):
                node, path = 0, []
                for token in sequence:
                    node = self._children[node][token]
                    path.append(node)
                item_paths[row, : len(path)] = renumber[torch.tensor(path)]
            leaf_counts = torch.zeros(len(self._children), dtype=torch.long)
            leaf_counts.scatter_add_(0, item_paths[item_paths >= 0], torch.ones_like(item_paths[item_paths >= 0]))
            leaf_counts[0] = len(self._sequences)
            self._exclusion_tables[device] = (item_paths.to(device), leaf_counts.to(device))
        return self._exclusion_tables[device]

    def prefix_allowed_tokens_fn(
        self, prompt_length: int, fallback_token_id: int | None = None
    ) -> Callable[[int, torch.Tensor], list[int]]:
        """Adapter for `model.generate(prefix_allowed_tokens_fn=...)` on a (left-padded) batch of prompts.

        Args:
            prompt_length (`int`): Padded length of the prompt batch; generated tokens start there.
            fallback_token_id (`int`, *optional*):
                Returned for complete or invalid prefixes (`generate` refuses an empty list); defaults to the
                first token of the first item. Only reached by finished items or dead beams.
        """
        fallback = [fallback_token_id if fallback_token_id is not None else next(iter(self._children[0]))]

        def allowed_tokens(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            return self.allowed(input_ids[prompt_length:].tolist()) or fallback

        return allowed_tokens

    def __repr__(self) -> str:
        return f"{type(self).__name__}(items={len(self)}, nodes={len(self._children)}, max_length={self.max_length})"
