"""Runs: the run folder, checkpoints and resume, the recorder, the store, reports."""
