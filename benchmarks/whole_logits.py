"""The teacher-forced likelihood pass as it was before chunking (attacks/likelihood.py up to
commit 9a75c7a), kept verbatim as the reference that `token_logprobs` is measured against
(make bench's likelihood row) and tested against (tests/attacks/test_likelihood.py).

It takes the float64 log-softmax of the model's whole [batch, tokens, vocab] logits at once:
with Llama-3's 128,256-token vocabulary that is 2.45 GB per 1,024-token row (4.4 GB with the
min-k%++ moments). Do not use it outside measurements and tests.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from attacks.likelihood import TokenScores


@torch.no_grad()
def whole_logits_token_logprobs(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
    *,
    context: Sequence[int] = (),
    moments: bool = False,
) -> list[TokenScores]:
    """Log-probability of each token of each row under teacher forcing.

    Without `context`, the first token of a row has nothing to condition on and is not
    scored. With `context` (token ids shared by every row, e.g. a canary prefix), the context
    is run once and every row token is scored given context + the row's earlier tokens.
    Rows are right-padded per batch; pads are never scored and never attended to.
    """
    if any(len(r) == 0 for r in rows):
        raise ValueError("token_logprobs: empty row")
    device = next(model.parameters()).device
    model.eval()
    cached = None
    if context:
        ctx = torch.tensor([list(context)], dtype=torch.long, device=device)
        cached = model(input_ids=ctx, use_cache=True)
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
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # [B, T-1, V]
            targets = ids[:, 1:]
            lengths = [len(r) - 1 for r in chunk]
        else:
            cache = copy.deepcopy(cached.cache)
            cache.batch_repeat_interleave(len(chunk))
            full_mask = torch.cat([mask.new_ones(len(chunk), len(context)), mask], dim=1)
            logits = model(input_ids=ids, attention_mask=full_mask, cache=cache).logits
            # The context's last position predicts each row's first token.
            first = cached.logits[:, -1:].expand(len(chunk), 1, -1)
            logits = torch.cat([first, logits[:, :-1]], dim=1)  # [B, T, V]
            targets = ids
            lengths = [len(r) for r in chunk]
        logp = torch.log_softmax(logits.double(), dim=-1)
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T']
        if moments:
            p = logp.exp()
            mean = (p * logp).sum(-1)
            std = ((p * logp.square()).sum(-1) - mean.square()).clamp(min=0).sqrt()
        for i, n in enumerate(lengths):
            out.append(
                TokenScores(
                    logprob=picked[i, :n].cpu(),
                    mean=mean[i, :n].cpu() if moments else torch.empty(0),
                    std=std[i, :n].cpu() if moments else torch.empty(0),
                )
            )
    return out
