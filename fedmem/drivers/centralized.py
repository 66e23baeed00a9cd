"""The centralized baseline: the same model, loop and audits on the pooled client data."""

from __future__ import annotations

from fedmem.config import Config
from fedmem.data.federated import build_federated_data
from fedmem.mitigations.dp_sgd import private_training
from fedmem.mitigations.goldfish import goldfish_label_mask
from fedmem.models.loading import build_model, load_tokenizer
from fedmem.runs.folder import load_checkpoint
from fedmem.runs.recorder import RunRecorder
from fedmem.training import StepVariant, encode_training_rows, train_local

POOLED = "0"  # the one "client" of the centralized baseline, as metrics and checkpoints name it


def epoch_seed(config: Config, epoch: int) -> int:
    return (config.seed * 1_000_003 + epoch * 1_009) % 2**31


def run_centralized(config: Config, on_round=None, resume: bool = False) -> dict:
    """Train and audit epoch by epoch (a round = an epoch); `resume` continues a run folder
    after its last complete epoch."""
    recorder = RunRecorder(config, on_round=on_round)
    point = recorder.start(resume=resume)
    tokenizer = load_tokenizer(config)
    model = build_model(config, seed=config.seed)
    data = build_federated_data(config, load_tokenizer)
    rows, prompt_lengths = encode_training_rows(
        tokenizer, data.pooled_texts, data.pooled_prompt_chars, config.training
    )
    # One accountant for the whole run, as each federated client has.
    history = point.state.get("accountants", {}).get(POOLED) if point else None
    private = private_training(config, len(rows), history)

    def resume_state() -> dict:
        return {"accountants": {POOLED: private.history()}} if private else {}

    if point:
        load_checkpoint(point.folder, model)
    else:
        recorder.record(0, model, resume_state=resume_state())
    variant = private.variant if private else StepVariant
    label_mask = goldfish_label_mask(config.goldfish)
    for epoch in range(point.round + 1 if point else 1, config.federation.rounds + 1):
        result = train_local(
            model,
            rows,
            config.training,
            tokenizer.pad_token_id,
            epoch_seed(config, epoch),
            variant,
            label_mask=label_mask,
            prompt_lengths=prompt_lengths,
        )
        facts = {"train_loss": result.mean_loss, "steps": result.steps, "examples": result.examples}
        recorder.record(
            epoch,
            model,
            {0: {**facts, **(private.metrics() if private else {})}},
            resume_state=resume_state(),
        )
    return recorder.finish(model)
