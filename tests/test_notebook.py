"""The exploration notebook runs top to bottom on the artifacts of a default-task run."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from tests.pipelines.conftest import _default_task_run, default_run  # noqa: F401  (fixtures)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_width.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_on_the_default_task(default_run, tmp_path, monkeypatch):  # noqa: F811
    project = default_run
    # JUPYTER_PATH comes first in the kernelspec search, so this "python3" (this interpreter, hence
    # this venv) wins over any user-level "python3" that may point at another Python.
    kernels = tmp_path / "jupyter"
    write_kernel_spec(kernels / "kernels" / "python3")
    assert json.loads((kernels / "kernels" / "python3" / "kernel.json").read_text())["argv"][0] == sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(kernels))
    monkeypatch.setenv("NEUMETA_PROJECT", str(project))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Started elsewhere than the project, so the notebook must find it through NEUMETA_PROJECT.
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    found = re.search(r"test accuracy at compression 0\.70: (\d\.\d+)", text)
    assert found and 0.0 <= float(found.group(1)) <= 1.0, text
    assert "outside the trained range" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no accuracy figure"
