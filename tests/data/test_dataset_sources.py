"""Per-source federation: each client holds one published dataset, held-out taken from each
dataset, canaries in proportion to client sizes; answer-only prompts and chat rendering."""

from __future__ import annotations

import pytest

from fedmem.config import ConfigError, build_config
from fedmem.data.federated import build_federated_data
from fedmem.data.qa import format_question
from fedmem.models.loading import load_tokenizer
from tests.support.medical_files import per_source_raw


def _qa_of(data, client: int) -> list[str]:
    canaries = {c.text for c in (*data.canaries, *data.exposure_canaries)}
    return [t for t in data.client_texts[client] if t not in canaries]


def test_each_client_holds_exactly_its_own_dataset(tiny_raw, tmp_path):
    data = build_federated_data(build_config(per_source_raw(tiny_raw, tmp_path)), load_tokenizer)
    heads = ("Open Question:", "MCQ:", "Closed Question:")
    for client, head in enumerate(heads):
        qa = _qa_of(data, client)
        assert qa and all(t.startswith(head) for t in qa)


def test_sizes_per_client_follow_the_dataset_sizes(tiny_raw, tmp_path):
    raw = per_source_raw(tiny_raw, tmp_path, sizes=(10, 20, 30))
    data = build_federated_data(build_config(raw), load_tokenizer)
    # 10% of each dataset is held out before injection: 1, 2 and 3 examples.
    assert [len(_qa_of(data, c)) for c in range(3)] == [9, 18, 27]
    assert (
        sorted(p.source for p in data.heldout)
        == ["flashcards"] + ["medmcqa"] * 2 + ["pubmedqa"] * 3
    )


def test_proportional_canaries_favour_the_larger_clients(tiny_raw, tmp_path):
    raw = per_source_raw(tiny_raw, tmp_path, sizes=(4, 4, 80))
    raw["canaries"] = {**raw["canaries"], "replica_counts": [8], "per_count": 4}
    data = build_federated_data(build_config(raw), load_tokenizer)
    copies = [c for canary in data.canaries for c in canary.clients]
    assert copies.count(2) > copies.count(0) + copies.count(1)


def test_by_source_needs_one_client_per_dataset(tiny_raw, tmp_path):
    raw = per_source_raw(tiny_raw, tmp_path)
    raw["federation"] = {**raw["federation"], "num_clients": 2}
    with pytest.raises(ConfigError, match="data.datasets lists 3 datasets but"):
        build_config(raw)


def test_prompt_chars_cover_the_prompt_of_qa_and_none_of_a_canary(tiny_raw, tmp_path):
    data = build_federated_data(build_config(per_source_raw(tiny_raw, tmp_path)), load_tokenizer)
    canaries = {c.text for c in (*data.canaries, *data.exposure_canaries)}
    for text, chars in zip(data.pooled_texts, data.pooled_prompt_chars, strict=True):
        if text in canaries:
            assert chars == 0
        else:
            assert text[:chars].endswith("The answer is:")
    heldout = data.heldout[0]
    assert data.heldout_texts[0].startswith(format_question(heldout))


def test_chat_template_renders_the_question_as_user_and_answer_as_assistant(tiny_raw, tmp_path):
    # A tiny Llama saved with a ChatML template, as SmolLM2's tokenizer has.
    from fedmem.models.loading import load_base_model, load_tokenizer

    base = build_config(tiny_raw)
    tokenizer = load_tokenizer(base)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    folder = tmp_path / "chat-model"
    tokenizer.save_pretrained(folder)
    load_base_model(base).save_pretrained(folder)
    tokenizer.chat_template = None
    raw = per_source_raw(tiny_raw, tmp_path / "data")
    raw["model"] = {"name": str(folder), "chat_template": True}
    data = build_federated_data(build_config(raw), load_tokenizer)
    text, chars = data.client_texts[0][0], data.client_prompt_chars[0][0]
    if text in {c.text for c in data.canaries}:
        text, chars = data.client_texts[0][1], data.client_prompt_chars[0][1]
    assert text.startswith("<|im_start|>user\nOpen Question: ")
    assert text[:chars].endswith("<|im_start|>assistant\n")
    assert text[chars:].startswith("The answer is: Drug ")


# --------------------------------------- audits score held-out rows as training rows are


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def chat_config(tiny_raw, tmp_path):
    """The per-source datasets (one of them multiple choice) on a tiny Llama saved with a
    ChatML template, rendered with it (`model.chat_template = true`)."""
    from fedmem.models.loading import load_base_model

    base = build_config(tiny_raw)
    tokenizer = load_tokenizer(base)
    tokenizer.chat_template = CHATML
    folder = tmp_path / "chat-model"
    tokenizer.save_pretrained(folder)
    load_base_model(base).save_pretrained(folder)
    tokenizer.chat_template = None
    raw = per_source_raw(tiny_raw, tmp_path / "data")
    raw["model"] = {"name": str(folder), "chat_template": True}
    return build_config(raw)


def test_mia_non_members_are_rendered_with_the_chat_template_as_members_are(chat_config):
    from fedmem.audits.membership import membership_samples

    samples = [s for s in membership_samples(chat_config) if s.kind == "qa"]
    data = build_federated_data(chat_config, load_tokenizer)
    nonmembers = [s.text for s in samples if not s.member]
    assert nonmembers == list(data.heldout_texts)
    assert all(s.text.startswith("<|im_start|>user\n") for s in samples)


def test_qa_utility_prompts_the_held_out_questions_as_training_rows_are(chat_config):
    from fedmem.audits import utility

    heldout = build_federated_data(chat_config, load_tokenizer).heldout
    tokenizer = load_tokenizer(chat_config)
    for pair, target in zip(heldout, utility.qa_targets(chat_config), strict=True):
        assert tokenizer.decode(target.prefix_ids).endswith("<|im_end|>\n<|im_start|>"
                                                            "assistant\nThe answer is:")
        assert tokenizer.decode(target.suffix_ids) == f" {pair.answer}"  # no end of turn
    assert any(p.options for p in heldout)  # multiple choice is prompted the same way:
    for text, start in utility.qa_prompts(chat_config):
        assert text.startswith("<|im_start|>user\n")
        assert text[:start].endswith("<|im_start|>assistant\nThe answer is:")


def test_without_a_chat_template_the_qa_prompts_are_the_plain_format(tiny_raw):
    from fedmem.audits.utility import qa_prompts
    from fedmem.data.qa import format_qa

    config = build_config(tiny_raw)
    heldout = build_federated_data(config, load_tokenizer).heldout
    assert qa_prompts(config) == tuple((format_qa(p), len(format_question(p))) for p in heldout)
