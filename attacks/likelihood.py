"""Teacher-forced token log-probabilities: the one likelihood computation behind exposure,
membership inference and multiple-choice utility.

`token_logprobs` scores every token of each row given the tokens before it (and an optional
shared context, run once and its KV cache reused for every row), in padded batches of one
forward pass each. No generation is involved.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenScores:
    """Per scored token of one row (length = row length, or row length - 1 without context):
    `logprob` log p(x_t | x_<t); `mean`, `std` of log p(z | x_<t) over z ~ p(. | x_<t)
    (the moments min-k%++ normalizes by; empty unless asked for)."""

    logprob: torch.Tensor  # [T] float64
    mean: torch.Tensor  # [T] float64, or empty
    std: torch.Tensor  # [T] float64, or empty


# Positions per chunk when `chunk_tokens` is not given: as many as fit one float64
# [positions, vocab] tensor in this many bytes (the log-softmax and moments hold about three
# such tensors at once): 32 positions for Llama-3's 128,256 tokens, thousands for a tiny vocab.
CHUNK_BYTES = 32 * 2**20

# Causal LM families whose forward is exactly `lm_head(<body>(...).last_hidden_state)`, with
# the body at this attribute path: no scaling, soft-capping, bias or slicing after the head
# (Gemma soft-caps, Cohere and Granite scale, BART adds a bias), so applying the head to a
# chunk of hidden states gives those positions' logits. Other families take the whole-logits
# path (see `_split_head`).
PLAIN_HEAD_BODIES: dict[str, str] = {
    "llama": "model",
    "mistral": "model",
    "qwen2": "model",
    "qwen3": "model",
    "gpt2": "transformer",
    "opt": "model.decoder",
}


def _split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, int] | None:
    """(body, LM head, vocabulary size) of a plain causal LM, unwrapping a peft model; None
    when there is no such head to apply per chunk of positions.

    A peft LoRA model's layers are adapted in place inside its base causal LM, so the base
    LM's body and head (an adapted or `modules_to_save` head included: whatever module sits
    at `lm_head` is what the model's own forward calls) compute what the peft model
    computes. Prompt learning (virtual tokens), aLoRA (offsets set up by the peft forward)
    and Poly (task ids) change the inputs in peft's own forward: not split."""
    causal = model
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        config = getattr(model, "active_peft_config", None)
        if (
            config is None
            or getattr(config, "is_prompt_learning", False)
            or getattr(config, "alora_invocation_tokens", None)
            or str(getattr(config, "peft_type", "")).upper().endswith("POLY")
        ):
            return None
        causal = model.get_base_model()
    config = getattr(causal, "config", None)
    path = PLAIN_HEAD_BODIES.get(getattr(config, "model_type", None))
    head = getattr(causal, "lm_head", None)
    if path is None or not isinstance(head, torch.nn.Module):
        return None
    body = causal
    for name in path.split("."):
        body = getattr(body, name, None)
        if not isinstance(body, torch.nn.Module):
            return None
    return body, head, int(config.vocab_size)


def _score_positions(
    states: torch.Tensor,
    first: torch.Tensor | None,
    lengths: Sequence[int],
    targets: torch.Tensor,
    project,
    chunk: int,
    moments: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities (and moments) of every scored position of a batch, flattened
    row-major, computed `chunk` positions at a time so that no [batch, tokens, vocab]
    tensor exists.

    Scored position t of row i predicts `targets[i, t]` from `states[i, t]`, or, when `first`
    is given (a shared context), from `first` at t = 0 and `states[i, t - 1]` after.
    `project` maps a chunk of states [c, D] to logits [c, V] (the LM head, or nothing when
    `states` are logits already)."""
    device = states.device
    rows = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(lengths)])
    steps = torch.cat([torch.arange(n) for n in lengths])
    rows, steps = rows.to(device), steps.to(device)
    # The results are allocated before the loop and written in place: small tensors kept
    # from each chunk would land in the holes the chunk's large buffers leave on the C heap,
    # so that the next chunk's buffers no longer fit there and the heap grows by a chunk's
    # worth every chunk (measured: 5.3 GB for 2 rows of 1,024 tokens at Llama-3's vocab).
    picked = torch.empty(len(rows), dtype=torch.float64, device=device)
    mean = torch.empty(len(rows) if moments else 0, dtype=torch.float64, device=device)
    std = torch.empty_like(mean)
    for lo in range(0, len(rows), chunk):
        hi = min(lo + chunk, len(rows))
        r, t = rows[lo:hi], steps[lo:hi]
        if first is None:
            x = states[r, t]
        else:
            x = states[r, (t - 1).clamp(min=0)]
            x[t == 0] = first
        logp = torch.log_softmax(project(x).double(), dim=-1)  # [c, V]
        picked[lo:hi] = logp.gather(-1, targets[r, t].unsqueeze(-1)).squeeze(-1)
        if moments:
            # mu = sum p logp, sigma^2 = sum p logp^2 - mu^2, in one buffer (in place).
            weighted = logp.exp().mul_(logp)  # p logp
            m = weighted.sum(-1)
            mean[lo:hi] = m
            second = weighted.mul_(logp).sum(-1)  # p logp^2
            std[lo:hi] = (second - m.square()).clamp(min=0).sqrt()
            del weighted
        del logp
    return picked, mean, std


@torch.no_grad()
def token_logprobs(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
    *,
    context: Sequence[int] = (),
    moments: bool = False,
    chunk_tokens: int | None = None,
) -> list[TokenScores]:
    """Log-probability of each token of each row under teacher forcing.

    Without `context`, the first token of a row has nothing to condition on and is not
    scored. With `context` (token ids shared by every row, e.g. a canary prefix), the context
    is run once and every row token is scored given context + the row's earlier tokens.
    Rows are right-padded per batch; pads are never scored and never attended to.

    Memory does not grow with the vocabulary times the batch: the model's body runs once per
    batch, and its LM head, the float64 log-softmax and the moments run on `chunk_tokens`
    scored positions at a time (default: see CHUNK_BYTES), so no [batch, tokens, vocab]
    tensor is made. A model without a plain LM head (see `_split_head`) returns its whole
    logits from its own forward, unavoidably; only the float64 work is chunked then.
    """
    if any(len(r) == 0 for r in rows):
        raise ValueError("token_logprobs: empty row")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"token_logprobs: chunk_tokens must be >= 1, got {chunk_tokens}")
    device = next(model.parameters()).device
    model.eval()
    split = _split_head(model)
    # With a plain head, the body gives hidden states and the head is applied per chunk.
    # Fallback, the model's own forward and its whole [batch, tokens, vocab] logits: only
    # when there is no LM head that can be applied alone (no `lm_head` module, a family
    # whose logits are more than the head's output, or a peft method that changes the
    # inputs); the float64 log-softmax and moments are still chunked then.
    run = split[0] if split else model
    project = split[1] if split else (lambda x: x)
    outputs = "last_hidden_state" if split else "logits"
    cached = first = None
    if context:
        ctx = torch.tensor([list(context)], dtype=torch.long, device=device)
        cached = run(input_ids=ctx, use_cache=True)
        # The context's last position predicts each row's first token.
        first = getattr(cached, outputs)[0, -1]
    out: list[TokenScores] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        if cached is None:
            states = getattr(run(input_ids=ids, attention_mask=mask), outputs)  # [B, W, D]
            targets = ids[:, 1:]
            lengths = [len(r) - 1 for r in chunk]
        else:
            cache = copy.deepcopy(cached.cache)
            cache.batch_repeat_interleave(len(chunk))
            full_mask = torch.cat([mask.new_ones(len(chunk), len(context)), mask], dim=1)
            states = getattr(run(input_ids=ids, attention_mask=full_mask, cache=cache), outputs)
            targets = ids
            lengths = [len(r) for r in chunk]
        vocab = split[2] if split else states.shape[-1]
        per_chunk = chunk_tokens or max(1, CHUNK_BYTES // (8 * vocab))
        picked, mean, std = _score_positions(
            states, first, lengths, targets, project, per_chunk, moments
        )
        del states
        picked = torch.split(picked.cpu(), lengths)
        if moments:
            mean, std = torch.split(mean.cpu(), lengths), torch.split(std.cpu(), lengths)
        for i in range(len(chunk)):
            none = torch.empty(0)
            out.append(
                TokenScores(
                    logprob=picked[i],
                    mean=mean[i] if moments else none,
                    std=std[i] if moments else none,
                )
            )
    return out


def split_continuation(
    tokenizer: PreTrainedTokenizerBase, prefix: str, continuation: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(context ids, continuation ids) cut from the tokenization of `prefix + continuation`
    as a whole, at the first token reaching past the prefix (as `split_record` cuts)."""
    enc = tokenizer(prefix + continuation, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    cut = sum(1 for _, end in offsets if end <= len(prefix))
    if cut == len(ids):
        raise ValueError(f"continuation {continuation!r} adds no token to the prefix")
    return tuple(ids[:cut]), tuple(ids[cut:])


def continuation_logprobs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    continuations: Sequence[str],
    batch_size: int = 256,
) -> np.ndarray:
    """log p(continuation | prefix) of each continuation (summed over its tokens, nats).

    Each candidate is tokenized with the prefix, as it would be in training; candidates
    whose context tokens agree (normally all) share one cached context forward pass."""
    groups: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
    for i, text in enumerate(continuations):
        context, cont = split_continuation(tokenizer, prefix, text)
        groups[context].append((i, cont))
    out = np.empty(len(continuations), dtype=np.float64)
    for context, members in groups.items():
        scores = token_logprobs(
            model,
            [c for _, c in members],
            tokenizer.pad_token_id,
            batch_size,
            context=context,
        )
        for (i, _), s in zip(members, scores, strict=True):
            out[i] = float(s.logprob.sum())
    return out
