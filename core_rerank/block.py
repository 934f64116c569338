"""Block attention (``attention="block"``): every document encoded on its own; only the query reads them all.

The prompt has the same parts as the full list-wise prompt (:mod:`core_rerank.prompt`): the shared prefix (chat
turn start and "Here are some paragraphs:"), the documents, and the query suffix (instruction, "Query: ", the
query, the chat turn's end). Here each document block (its tokens and the "\\n\\n" after it, no "[i]" label) is
encoded after the prefix alone, and the query suffix runs over the prefix's keys and values followed by every
block's, so:

- no document attends to another, and the score, which reads only the query's attention to each document, does not
  depend on the input order: a softmax over a set of keys does not depend on the keys' order, and no position
  depends on the list (below);
- attention cost grows with the sum of the blocks' squared lengths, not with the square of the list's length;
- a document's keys and values depend only on the model, the prefix, its own tokens and its positions, so they are
  kept across calls (:mod:`core_rerank.kv_cache`).

Positions (rotary): the prefix holds positions 0..p-1; every block *ends* at position p + B - 1, where B is the
longest block ``max_doc_tokens`` allows (``align="end"``: no document sits nearer the query than another, and each
document's end, where a passage's conclusion usually sits, is as near the query as in a one-document prompt); the
query suffix starts at p + B. ``align="start"`` (every block starts at p) is kept for measurement
(docs/block-attention.md says which was chosen, and why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import DynamicCache

from .head_signal import PrefixContext, cache_argument, croppable
from .kv_cache import DocumentKV, DocumentKVCache

__all__ = ["BlockLayout", "BlockPrompt", "block_context", "encode_blocks", "supports_blocks"]

Align = Literal["end", "start"]

BATCH_TOKENS = 4096
"""Padded tokens per batch when documents are encoded (rows x longest block): large enough that a CPU's matrix
kernels are busy, small enough that the batch's activations stay a few hundred MB on the models packaged."""


@dataclass(frozen=True)
class BlockLayout:
    """Where the parts of a block prompt sit: ``prefix`` ids, the ``separator`` ids after each document, the
    longest block ``block_tokens`` (B) and the alignment of shorter ones."""

    prefix: tuple[int, ...]
    separator: tuple[int, ...]
    block_tokens: int
    align: Align = "end"

    def starts(self, lengths: Sequence[int]) -> tuple[tuple[int, ...], int]:
        """The position of each block's first token, and of the query suffix's first token. A block longer than
        ``block_tokens`` (only texts given uncut to :meth:`Reranker.prompt`) moves the alignment point for the whole
        prompt, so nothing overlaps the prefix."""
        p = len(self.prefix)
        width = max([self.block_tokens, *lengths])
        if self.align == "end":
            return tuple(p + width - n for n in lengths), p + width
        return tuple(p for _ in lengths), p + width


@dataclass(frozen=True)
class BlockPrompt:
    """One block prompt ready to run: the prefix, each document's block (placement order) and where it starts,
    the query and N/A suffixes with their query-span rows (token indices within the suffix), and ``doc_spans``,
    each document's own tokens as key indices of the context (prefix, then the blocks in order)."""

    prefix: tuple[int, ...]
    blocks: tuple[tuple[int, ...], ...]
    starts: tuple[int, ...]
    suffix_position: int
    ids_query: list[int]
    query_rows: tuple[int, int]
    ids_null: list[int]
    null_rows: tuple[int, int]
    doc_spans: list[tuple[int, int]]

    @property
    def context_tokens(self) -> int:
        """Keys the query attends before its own: the prefix and every block."""
        return len(self.prefix) + sum(len(b) for b in self.blocks)

    @property
    def length(self) -> int:
        """Keys of the longest pass (what ``max_tokens`` bounds)."""
        return self.context_tokens + max(len(self.ids_query), len(self.ids_null))

    @classmethod
    def build(
        cls,
        layout: BlockLayout,
        documents: Sequence[Sequence[int]],
        query: tuple[list[int], tuple[int, int]],
        null: tuple[list[int], tuple[int, int]],
    ) -> BlockPrompt:
        """The prompt of ``documents`` (each one's own token ids, placement order) under ``layout``, with the query
        and N/A suffixes (ids, rows)."""
        blocks = tuple(tuple(d) + layout.separator for d in documents)
        starts, suffix_position = layout.starts([len(b) for b in blocks])
        spans, at = [], len(layout.prefix)
        for doc, block in zip(documents, blocks):
            spans.append((at, at + len(doc)))
            at += len(block)
        return cls(layout.prefix, blocks, starts, suffix_position, query[0], query[1], null[0], null[1], spans)


def supports_blocks(config) -> bool:
    """Whether a model's KV cache can be assembled from pieces: every layer full attention (a sliding-window layer
    drops old keys as it goes, so blocks cannot be concatenated for it): the layers :func:`croppable` accepts."""
    return croppable(DynamicCache(config=config))


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _run(model, ids: torch.Tensor, positions: torch.Tensor, cache: DynamicCache) -> None:
    model(input_ids=ids, position_ids=positions, use_cache=True, **{cache_argument(type(model)): cache})


@torch.inference_mode()
def encode_prefix(model, prefix: Sequence[int]) -> DocumentKV:
    """The prefix's keys and values per layer, each (kv heads, p, head dim)."""
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    _run(model, torch.tensor([list(prefix)], device=device), torch.arange(len(prefix), device=device)[None], cache)
    return tuple((k[0].clone(), v[0].clone()) for k, v in _layers(cache))


@torch.inference_mode()
def encode_blocks(
    model,
    prefix_kv: DocumentKV,
    blocks: Sequence[Sequence[int]],
    starts: Sequence[int],
    batch_tokens: int = BATCH_TOKENS,
) -> list[DocumentKV]:
    """Each block's keys and values per layer (each (kv heads, block tokens, head dim)), the block attending the
    prefix and itself only, at positions ``starts[i]`` onwards.

    Blocks run in right-padded batches of similar length (sorted by length, then by ids, so the same set of blocks
    makes the same batches in any input order). Right padding needs no mask: causal attention never lets a block's
    tokens see the padding after them, and the padding's keys are dropped.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(blocks)), key=lambda i: (len(blocks[i]), tuple(blocks[i])))
    out: list[DocumentKV | None] = [None] * len(blocks)
    p = prefix_kv[0][0].shape[1]
    batch: list[int] = []
    for n, i in enumerate(order):
        batch.append(i)
        following = len(blocks[order[n + 1]]) if n + 1 < len(order) else None
        if following is None or (len(batch) + 1) * following > batch_tokens:
            width = len(blocks[batch[-1]])  # the longest: sorted by length
            ids = torch.tensor([list(blocks[j]) + [0] * (width - len(blocks[j])) for j in batch], device=device)
            # Padding repeats its row's last real position: no position of a batch exceeds its rows' own (rotary
            # scalings that read the largest position in a pass see the same one in any batch).
            steps = torch.arange(width)
            positions = torch.stack([starts[j] + steps.clamp(max=len(blocks[j]) - 1) for j in batch]).to(device)
            cache = DynamicCache(config=model.config)
            for layer, (k, v) in enumerate(prefix_kv):
                shape = (len(batch), *k.shape)
                cache.update(k.unsqueeze(0).expand(shape), v.unsqueeze(0).expand(shape), layer)
            _run(model, ids, positions, cache)
            for row, j in enumerate(batch):
                size = len(blocks[j])
                out[j] = tuple(
                    (k[row, :, p : p + size].clone(), v[row, :, p : p + size].clone()) for k, v in _layers(cache)
                )
            batch = []
    return out  # type: ignore[return-value]


def block_context(
    model, prompt: BlockPrompt, kv_cache: DocumentKVCache | None, weights_version: int = 0
) -> PrefixContext:
    """The KV cache the query suffixes run on: the prefix's keys and values, then each block's, taken from
    ``kv_cache`` where it holds them (None: no caching) and encoded (then kept) where not. A block that appears
    twice in the prompt is encoded once. ``weights_version`` (:meth:`LoadedModel.weights_version`) is part of every
    key: entries made before the weights changed in place are never read."""

    def make() -> DocumentKV:
        return encode_prefix(model, prompt.prefix)

    prefix_kv = kv_cache.prefix((weights_version, prompt.prefix), make) if kv_cache is not None else make()
    keys = [
        ("block", weights_version, prompt.prefix, start, block) for block, start in zip(prompt.blocks, prompt.starts)
    ]
    found: dict[tuple, DocumentKV] = {}
    missing = []
    for key in dict.fromkeys(keys):
        kv = kv_cache.get(key) if kv_cache is not None else None
        if kv is None:
            missing.append(key)
        else:
            found[key] = kv
    if missing:
        encoded = encode_blocks(model, prefix_kv, [k[4] for k in missing], [k[3] for k in missing])
        for key, kv in zip(missing, encoded):
            found[key] = kv
            if kv_cache is not None:
                kv_cache.put(key, kv)
    cache = DynamicCache(config=model.config)
    for layer, (pk, pv) in enumerate(prefix_kv):
        k = torch.cat([pk, *(found[key][layer][0] for key in keys)], dim=1)
        v = torch.cat([pv, *(found[key][layer][1] for key in keys)], dim=1)
        cache.update(k.unsqueeze(0), v.unsqueeze(0), layer)
    return PrefixContext(cache, prompt.context_tokens, prompt.suffix_position)
