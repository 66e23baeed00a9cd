"""The DP audits: one-run empirical epsilon bounds beside the accountant's epsilon."""
