"""Audits: from a config and a model to audit rows (the math lives in `attacks`)."""
