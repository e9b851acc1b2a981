"""Execute a jupytext (py:percent) notebook with injected parameters; write the executed .ipynb and an HTML page.

Notebooks read their inputs relative to the repository root (the working directory of the run) and get
``RESULTS`` (e.g. ``results/smoke``), ``SCALE`` and ``PAPER`` from a parameters cell inserted at the top.
An exception in any cell raises here, so a broken notebook fails its job.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import io


def render(py_path: str | os.PathLike, ipynb_out: str | os.PathLike, html_out: str | os.PathLike, *,
           params: dict, cwd: str | os.PathLike = ".", timeout: int = 600) -> None:
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = jupytext.read(py_path)
    source = "# Parameters injected by the workflow\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(0, cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(cwd).resolve())}}).execute()
    with io.atomic_path(ipynb_out) as tmp:
        nbformat.write(nb, str(tmp))
    html, _ = HTMLExporter().from_notebook_node(nb)
    io.write_text(html_out, html)
