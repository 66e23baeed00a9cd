"""The centralized baseline: the same model, loop and audits on the pooled client data."""

from __future__ import annotations

from fedmem.config import Config
from fedmem.dataset import build_federated_data
from fedmem.mitigations.dp_sgd import private_training
from fedmem.mitigations.goldfish import goldfish_label_mask
from fedmem.models import build_model, load_tokenizer
from fedmem.results import RunRecorder
from fedmem.training import StepVariant, encode_training_rows, train_local


def run_centralized(config: Config, on_round=None) -> dict:
    recorder = RunRecorder(config, on_round=on_round)
    recorder.start()
    tokenizer = load_tokenizer(config)
    model = build_model(config, seed=config.seed)
    data = build_federated_data(config)
    rows, prompt_lengths = encode_training_rows(
        tokenizer, data.pooled_texts, data.pooled_prompt_chars, config.training
    )
    recorder.record(0, model)
    # One accountant for the whole run, as each federated client has.
    private = private_training(config, len(rows))
    variant = private.variant if private else StepVariant
    label_mask = goldfish_label_mask(config.goldfish)
    for epoch in range(1, config.federation.rounds + 1):
        seed = (config.seed * 1_000_003 + epoch * 1_009) % 2**31
        result = train_local(
            model,
            rows,
            config.training,
            tokenizer.pad_token_id,
            seed,
            variant,
            label_mask=label_mask,
            prompt_lengths=prompt_lengths,
        )
        facts = {"train_loss": result.mean_loss, "steps": result.steps, "examples": result.examples}
        recorder.record(epoch, model, {0: {**facts, **(private.metrics() if private else {})}})
    return recorder.finish(model)
