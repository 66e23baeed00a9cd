"""The tiny sizes every test run uses."""

TINY_OVERRIDES = {
    "model": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "pretrain_steps": 20,
    },
    "data": {"num_samples": 120},
    "canaries": {"replica_counts": [1, 4], "per_count": 2, "exposure_digits": 2},
    "federation": {"num_clients": 2, "rounds": 2},
    "training": {"batch_size": 8, "lr": 3e-3, "max_seq_len": 128},
    "attack": {"prefix_tokens": 16, "suffix_tokens": 16},
    "dp_audit": {"records": 40, "client_canaries": 8},  # DP runs: a small audit
}
