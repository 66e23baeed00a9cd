"""The centralized baseline: the same model, loop and audits on the pooled client data."""

from __future__ import annotations

from fedmem.config import Config
from fedmem.data.federated import build_federated_data
from fedmem.mitigations import registry
from fedmem.mitigations.local_fit import local_fit
from fedmem.models.loading import build_model, load_tokenizer
from fedmem.runs.folder import load_checkpoint
from fedmem.runs.recorder import RunRecorder
from fedmem.seeding import training_seed
from fedmem.training import encode_training_rows

POOLED = "0"  # the one "client" of the centralized baseline, as metrics and checkpoints name it


def epoch_seed(config: Config, epoch: int) -> int:
    return training_seed(config.seed, epoch)


def run_centralized(config: Config, on_round=None, resume: bool = False) -> dict:
    """Train and audit epoch by epoch (a round = an epoch) with the client's local fit;
    `resume` continues a run folder after its last complete epoch."""
    recorder = RunRecorder(config, on_round=on_round)
    point = recorder.start(resume=resume)
    tokenizer = load_tokenizer(config)
    model = build_model(config, seed=config.seed)
    data = build_federated_data(config, load_tokenizer)
    rows, prompt_lengths = encode_training_rows(
        tokenizer, data.pooled_texts, data.pooled_prompt_chars, config.training
    )
    # One step-variant history (DP-SGD: one accountant) for the whole run, as each
    # federated client has.
    history = point.state.get("accountants", {}).get(POOLED) if point else None

    def resume_state(saved: dict | None) -> dict:
        return {"accountants": {POOLED: saved}} if saved is not None else {}

    if point:
        load_checkpoint(point.folder, model)
    else:
        plan = registry.step_plan(config, len(rows), history)  # before any step
        recorder.record(0, model, resume_state=resume_state(plan.history() if plan else None))
    for epoch in range(point.round + 1 if point else 1, config.federation.rounds + 1):
        seed = epoch_seed(config, epoch)
        fit = local_fit(config, model, rows, prompt_lengths, tokenizer.pad_token_id, seed, history)
        history = fit.history()
        result = fit.result
        facts = {"train_loss": result.mean_loss, "steps": result.steps, "examples": result.examples}
        recorder.record(
            epoch, model, {0: {**facts, **fit.metrics()}}, resume_state=resume_state(history)
        )
    return recorder.finish(model)
