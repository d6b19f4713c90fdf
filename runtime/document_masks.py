"""Document boundaries inside packed sequences: position ids, document ids and attention metadata.

A sequence packs several documents (or slices of them). Recipes that keep attention inside a
document (FlashAttention's varlen kernels, FlexAttention, Megatron's ``reset_position_ids`` and
``reset_attention_mask``) need to know where each one starts:

- ``document_ids[b, i]``: which document slice of sequence ``b`` token ``i`` belongs to, numbered
  0, 1, ... within the sequence (a slice: the part of one plan entry inside one sequence);
- ``position_ids[b, i]``: the token's position in its document slice, restarting at 0 at every slice
  start; with ``continue_positions`` a slice that continues a document begun in an earlier sequence
  goes on from the document's own offset instead (its first token has position ``token_start``).

`varlen_metadata` turns a batch's ``document_ids`` into ``cu_seqlens`` / ``max_seqlen`` for
``flash_attn_varlen_func``; `flex_block_mask` builds a causal, document-local FlexAttention block
mask when ``torch.nn.attention.flex_attention`` is available (its backward pass needs a GPU);
`dense_document_mask` is the same mask as a boolean tensor for ``scaled_dot_product_attention``
(any device, memory quadratic in ``seq_len``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def document_layout(sizes: np.ndarray, token_start: np.ndarray, batch_size: int, seq_len: int,
                    continue_positions: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(position_ids, document_ids), int64 ``[batch_size, seq_len]``, of a step whose packed entries
    hold ``sizes[i]`` tokens each, starting at document token ``token_start[i]``."""
    sizes = np.asarray(sizes, np.int64)
    total = batch_size * seq_len
    if int(sizes.sum()) != total:
        raise ValueError(f"the entries hold {int(sizes.sum())} tokens, the step {batch_size} x {seq_len}")
    at = np.arange(total, dtype=np.int64)
    entry = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
    seq = at // seq_len
    # A slice starts where the entry or the sequence changes.
    starts = np.ones(total, bool)
    starts[1:] = (entry[1:] != entry[:-1]) | (seq[1:] != seq[:-1])
    slice_no = np.cumsum(starts) - 1
    first_slice_of_seq = slice_no[::seq_len]  # slice number at each sequence's first token
    document_ids = slice_no - np.repeat(first_slice_of_seq, seq_len)
    slice_first_token = np.flatnonzero(starts)
    offset = at - slice_first_token[slice_no]
    if continue_positions:
        entry_first_token = np.cumsum(sizes) - sizes
        offset = offset + (slice_first_token[slice_no] - entry_first_token[entry]) + np.asarray(
            token_start, np.int64)[entry]
    return offset.reshape(batch_size, seq_len), document_ids.reshape(batch_size, seq_len)


def varlen_metadata(document_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens, max_seqlen)`` of a ``[batch, seq_len]`` batch flattened to one stream: int32
    cumulative lengths of every document slice, as FlashAttention's varlen functions take them."""
    b, n = document_ids.shape
    flat = document_ids.reshape(-1)
    new = torch.ones(b * n, dtype=torch.bool, device=flat.device)
    new[1:] = flat[1:] != flat[:-1]
    new[::n] = True  # every sequence starts a slice, even when ids repeat across rows
    starts = torch.nonzero(new).flatten()
    ends = torch.cat([starts[1:], torch.tensor([b * n], device=flat.device)])
    cu = torch.cat([torch.zeros(1, dtype=torch.int64, device=flat.device), ends]).to(torch.int32)
    return cu, int((ends - starts).max())


def flex_block_mask(document_ids: torch.Tensor, *, block_size: int = 128) -> Any:
    """A causal FlexAttention block mask that keeps attention inside each document slice."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as exc:  # pragma: no cover - torch < 2.5
        raise RuntimeError("flex_block_mask needs torch.nn.attention.flex_attention (torch >= 2.5)") from exc
    b, n = document_ids.shape

    def same_document_causal(batch: Any, head: Any, q: Any, kv: Any) -> Any:
        return (document_ids[batch, q] == document_ids[batch, kv]) & (q >= kv)

    return create_block_mask(same_document_causal, B=b, H=None, Q_LEN=n, KV_LEN=n,
                             device=str(document_ids.device), BLOCK_SIZE=block_size)


def dense_document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``[batch, 1, seq_len, seq_len]``: token ``q`` may attend to ``kv <= q`` of its slice."""
    n = document_ids.shape[1]
    same = document_ids[:, None, :, None] == document_ids[:, None, None, :]
    return same & torch.ones(n, n, dtype=torch.bool, device=document_ids.device).tril()
