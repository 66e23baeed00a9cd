"""Output sent to a file or a pipe keeps whole table cells: there is no terminal width."""

import subprocess
import sys

WIDE_TABLE = """
from rich.table import Table
from fedmem.runs.report import console
table = Table()
for name in ("replicas", "canaries", "exact (before)", "exact", "token acc", "edit sim",
             "longest run", "MIA AUC (reference)", "exposure (bits)", "loss gap (nats)"):
    table.add_column(name)
table.add_row("0 (twins, never injected)", "32", "0.0%", "0.0%", "19.5%", "27.4%", "1.7",
              "-", "1.6", "-")
console.print(table)
"""


def test_a_table_piped_to_a_file_is_not_cut_to_80_columns():
    out = subprocess.run(
        [sys.executable, "-c", WIDE_TABLE], capture_output=True, text=True, check=True
    ).stdout
    assert "…" not in out
    assert "0 (twins, never injected)" in out
    assert "MIA AUC (reference)" in out
