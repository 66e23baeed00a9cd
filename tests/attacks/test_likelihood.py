"""Teacher-forced token log-probabilities: the one computation behind exposure and MIA."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

from attacks.likelihood import (
    _split_head,
    continuation_logprobs,
    split_continuation,
    token_logprobs,
)
from benchmarks.speed_ratios import PeakRSS
from benchmarks.whole_logits import whole_logits_token_logprobs
from tests.support.attack_models import tiny_model, tokenizer


def _by_hand(model, row: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return torch.stack([logp[t - 1, row[t]] for t in range(1, len(row))])


def test_padded_batches_equal_one_unpadded_row_at_a_time():
    tok = tokenizer()
    model = tiny_model(tok, seed=0)
    rows = [tok(t)["input_ids"] for t in ("Jane Roe, MRN 4829", "asthma", "PIN 0123 for Jane")]
    scores = token_logprobs(model, rows, tok.pad_token_id, batch_size=2)
    for row, s in zip(rows, scores, strict=True):
        assert torch.allclose(s.logprob, _by_hand(model, row), atol=1e-5)


def test_a_shared_context_scores_like_the_concatenated_row():
    tok = tokenizer()
    model = tiny_model(tok, seed=1)
    context = tok("Pharmacy refill PIN for Jane Roe:")["input_ids"]
    rows = [tok(" 0123")["input_ids"], tok(" 98")["input_ids"]]
    scores = token_logprobs(model, rows, tok.pad_token_id, context=context)
    for row, s in zip(rows, scores, strict=True):
        full = _by_hand(model, context + row)
        assert torch.allclose(s.logprob, full[len(context) - 1 :], atol=1e-5)


def test_moments_are_the_mean_and_std_of_log_p_under_the_model():
    tok = tokenizer()
    model = tiny_model(tok, seed=2)
    row = tok("Diagnosis: asthma")["input_ids"]
    s = token_logprobs(model, [row], tok.pad_token_id, moments=True)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([row])).logits[0, 0].double(), -1)
    mean = (logp.exp() * logp).sum()
    var = (logp.exp() * (logp - mean) ** 2).sum()
    assert torch.isclose(s.mean[0], mean) and torch.isclose(s.std[0], var.sqrt())


def test_continuations_are_cut_from_the_whole_text_tokenization():
    tok = tokenizer()
    context, cont = split_continuation(tok, "PIN for Jane Roe:", " 0123")
    assert list(context) + list(cont) == tok("PIN for Jane Roe: 0123")["input_ids"]
    model = tiny_model(tok, seed=3)
    got = continuation_logprobs(model, tok, "PIN for Jane Roe:", [" 0123"])[0]
    full = _by_hand(model, list(context) + list(cont))
    assert abs(got - float(full[len(context) - 1 :].sum())) < 1e-5


# ---------------------------------------------------------------- chunked pass vs whole logits
# The reference: the pass as it was before chunking, verbatim (benchmarks/whole_logits.py).


VOCAB = 211
ROWS = [[5, 17, 3, 99, 42, 7, 7, 1, 150, 33, 8], [9, 4], [60, 61, 62, 63, 64, 65, 66], [2, 210]]
CONTEXT = [11, 12, 13, 14, 15]


def _llama(seed: int, dtype=torch.float64, tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


def _lora(seed: int, **extra):
    """A LoRA model whose adapters (and `modules_to_save` copies) are random, so that they
    change every logit: a test that dropped them would fail."""
    settings = {"r": 4, "target_modules": ["q_proj", "v_proj"], **extra}
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` (not our code).
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
        model = get_peft_model(_llama(seed), LoraConfig(**settings))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _other(family: str, seed: int):
    """GPT-2 and OPT: the other families whose head is split off (body `transformer` and
    `model.decoder`)."""
    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2)
        return GPT2LMHeadModel(config).double().eval()
    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=64,
        max_position_embeddings=64,
        word_embed_proj_dim=16,  # a projection out of the decoder, before the head
        pad_token_id=0,
    )
    return OPTForCausalLM(config).double().eval()


MODELS = {
    "gpt2": lambda: _other("gpt2", 8),
    "opt": lambda: _other("opt", 9),
    "llama": lambda: _llama(0),
    "llama-tied": lambda: _llama(1, tied=True),
    "lora": lambda: _lora(2),
    "lora-head-saved": lambda: _lora(3, modules_to_save=["lm_head"]),
    "lora-on-head": lambda: _lora(4, target_modules=["q_proj", "lm_head"]),
}


def _assert_same(got, want, moments: bool, atol: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.logprob.dtype == torch.float64 and g.logprob.shape == w.logprob.shape
        assert torch.allclose(g.logprob, w.logprob, rtol=0, atol=atol)
        if moments:
            assert torch.allclose(g.mean, w.mean, rtol=0, atol=atol)
            assert torch.allclose(g.std, w.std, rtol=0, atol=atol)
        else:
            assert g.mean.numel() == 0 and g.std.numel() == 0


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("context", [(), tuple(CONTEXT)], ids=["rows", "context"])
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_chunked_pass_equals_the_whole_logits_pass_in_float64(kind, context, chunk):
    """A float64 model: the chunked head, log-softmax and moments agree with the whole-logits
    computation to 1e-9, padded batches (batch 3: rows of 11, 2 and 7 tokens) included."""
    model = MODELS[kind]()
    assert _split_head(model) is not None
    got = token_logprobs(
        model, ROWS, 0, batch_size=3, context=context, moments=True, chunk_tokens=chunk
    )
    _assert_same(
        got,
        whole_logits_token_logprobs(model, ROWS, 0, 3, context=context, moments=True),
        True,
        1e-9,
    )
    plain = token_logprobs(model, ROWS, 0, batch_size=3, context=context, chunk_tokens=chunk)
    _assert_same(
        plain, whole_logits_token_logprobs(model, ROWS, 0, 3, context=context), False, 1e-9
    )


def test_the_adapters_are_what_is_scored():
    """The LoRA model's own scores, not its base model's (the adapters are in the pass)."""
    model = _lora(5, modules_to_save=["lm_head"])
    with model.disable_adapter():
        base = token_logprobs(model, ROWS[:1], 0)[0].logprob
    adapted = token_logprobs(model, ROWS[:1], 0)[0].logprob
    assert (adapted - base).abs().max() > 1e-3


def test_a_float32_model_agrees_to_float32_rounding_of_its_logits():
    """In float32 the head's matmul on a chunk may round differently from the matmul on the
    whole batch (other BLAS blocking): the logits differ in their last bits, no more."""
    model = _llama(6, dtype=torch.float32)
    for context in ((), tuple(CONTEXT)):
        got = token_logprobs(model, ROWS, 0, 3, context=context, moments=True, chunk_tokens=2)
        want = whole_logits_token_logprobs(model, ROWS, 0, 3, context=context, moments=True)
        _assert_same(got, want, True, 1e-5)


def test_a_model_without_a_head_falls_back_to_its_whole_logits():
    """No accessible LM head (here a bare module returning logits): scored from the model's
    own logits, the float64 work still in chunks, with the same result."""
    model = _llama(7)

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    wrapped = LogitsOnly()
    assert _split_head(wrapped) is None
    for context in ((), tuple(CONTEXT)):
        got = token_logprobs(wrapped, ROWS, 0, 3, context=context, moments=True, chunk_tokens=2)
        want = whole_logits_token_logprobs(model, ROWS, 0, 3, context=context, moments=True)
        _assert_same(got, want, True, 1e-9)


@pytest.mark.parametrize("kind", ["llama", "lora-head-saved"])
def test_no_batch_by_tokens_by_vocab_tensor_is_ever_made(kind):
    """The head sees at most `chunk_tokens` positions per call, every scored position once;
    and no operation of the whole pass returns a tensor with more than `chunk_tokens` rows
    of vocabulary width (the model's weights aside)."""
    model, chunk = MODELS[kind](), 4
    head = _split_head(model)[1]
    calls: list[tuple[int, ...]] = []
    hook = head.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape)))

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    too_big: list[tuple[str, tuple[int, ...]]] = []

    class VocabWide(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for t in result if isinstance(result, (tuple, list)) else (result,):
                if (
                    isinstance(t, torch.Tensor)
                    and t.dim() >= 1
                    and VOCAB in t.shape
                    and t.numel() > chunk * VOCAB
                    and t.untyped_storage().data_ptr() not in weights
                ):
                    too_big.append((str(func), tuple(t.shape)))
            return result

    try:
        for context in ((), tuple(CONTEXT)):
            calls.clear()
            with VocabWide():
                token_logprobs(model, ROWS, 0, 4, context=context, moments=True, chunk_tokens=chunk)
            scored = sum(len(r) - (0 if context else 1) for r in ROWS)
            assert all(len(s) == 2 and s[0] <= chunk for s in calls), calls
            assert sum(s[0] for s in calls) == scored
    finally:
        hook.remove()
    assert not too_big, too_big


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux VmHWM only")
def test_peak_memory_of_the_pass_does_not_grow_with_the_batch():
    """4 rows of 512 tokens at a 64,000-token vocabulary: the whole-logits pass would hold
    float64 [4, 511, 64000] tensors (1 GB each); the chunked pass stays within a few
    chunks' buffers (about 32 MiB each), the C heap included. (Results kept from each chunk
    as small tensors made the heap grow by a chunk's buffers every chunk: 2.9 GB here.)"""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64_000,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=32,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(config).eval()
    rows = torch.randint(1, 64_000, (4, 512), generator=torch.Generator().manual_seed(0))
    token_logprobs(model, [rows[0, :8].tolist()], 0, moments=True)  # warm-up
    with PeakRSS() as rss:
        token_logprobs(model, rows.tolist(), 0, batch_size=4, moments=True)
    assert rss.method == "VmHWM"
    assert rss.growth < 400 * 2**20, rss.growth / 2**20
