"""Audits: from a config and a model to audit rows (the math lives in `attacks`).

One module per audit declares `AUDIT` (declaration.py); registry.py collects them and
model_audit.audit_model runs the enabled ones each round. dp/ holds the DP audits."""
