"""Data: generated and published medical QA, canaries, DP audit records, partitions."""
