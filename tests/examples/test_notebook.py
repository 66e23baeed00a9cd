"""examples/quickstart.ipynb runs end to end on the offline default, and is committed
without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def _code_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def test_the_notebook_is_committed_without_outputs():
    for cell in _code_cells(json.loads(NOTEBOOK.read_text())):
        assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_draws_both_plots(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = _code_cells(notebook)[0]
    assert parameters.source.startswith("# Parameters")
    parameters.source = (f"CONFIG = {str(ROOT / 'configs' / 'quickstart.toml')!r}\n"
                         f"OUTPUT = {str(tmp_path / 'runs')!r}")
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any cell's error
    assert (tmp_path / "runs" / "notebook" / "summary.json").is_file()
    images = [o for c in _code_cells(notebook) for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2
