"""How a DP-SGD accountant's history travels between a client and the server (message keys
only: the apps import this without importing opacus)."""

# A client reports its accountant history (JSON of `dp_sgd.history_to_record`) in its fit
# metrics under this key, so the server can checkpoint it and hand it back to a resumed run.
HISTORY_METRIC = "dp_history"
# The fit-config key under which a resumed server hands clients their saved histories
# (JSON: client index -> record).
RESUMED_HISTORIES = "dp_sgd.resumed_histories"
