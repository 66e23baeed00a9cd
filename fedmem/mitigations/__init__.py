"""Memorization mitigations; each is switched on and tuned from the config."""
