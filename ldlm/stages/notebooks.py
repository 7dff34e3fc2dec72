"""`make notebooks`: execute every notebook of `notebooks/` on a run.

The notebooks are kept as jupytext percent-format `.py` files (the source of truth); each is
converted, executed top to bottom with the run directory in `LDLM_RUN` and written, with its
outputs, to `<run>/notebooks/<name>.ipynb` beside the PNG plots it saves. A cell error stops
with the notebook's name and the error.
"""

from __future__ import annotations

import os
import pathlib

from ldlm.errors import LdlmError

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parents[2] / "notebooks"


class NotebookFailed(LdlmError):
    """A notebook cell raised."""


def run_notebooks(run_dir, names=None, env: dict | None = None, timeout: int = 1200) -> list:
    """Executes the notebooks (all, or those in `names`); returns the executed paths."""
    import jupytext
    import nbclient
    import nbformat

    run_dir = pathlib.Path(run_dir).absolute()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = sorted(NOTEBOOKS_DIR.glob("*.py"))
    if names:
        paths = [p for p in paths if p.stem in names]
    written = []
    old_env = dict(os.environ)
    os.environ.update({"LDLM_RUN": str(run_dir), "LDLM_NOTEBOOK_OUT": str(out_dir),
                       **(env or {})})
    try:
        for path in paths:
            nb = jupytext.read(path)
            client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                             resources={"metadata": {"path": os.getcwd()}})
            try:
                client.execute()
            except nbclient.exceptions.CellExecutionError as e:
                raise NotebookFailed(f"notebook {path.name} failed: "
                                     f"{str(e).strip().splitlines()[-1]}") from None
            target = out_dir / f"{path.stem}.ipynb"
            nbformat.write(nb, target)
            written.append(target)
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    return written
