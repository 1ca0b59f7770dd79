"""The three notebooks run end to end on the tiny budget, in a scratch directory, with this interpreter's kernel.

Each notebook's last code cell prints one `RESULT {json}` line; the assertions read it and the files it names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "genpolicy-test"


@pytest.fixture
def run_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Execute notebooks/<name> in tmp_path; returns (executed notebook, RESULT dict)."""
    # a kernel spec for sys.executable, found through JUPYTER_PATH: works in a clean clone where only `make test` ran
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "genpolicy (tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("GENPOLICY_NB_BUDGET", "tiny")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "work"
    work.mkdir()

    def run(name: str) -> tuple[dict, dict]:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=240,
                                         resources={"metadata": {"path": str(work)}})
        client.execute()
        text = "".join(o.get("text", "") for o in nb.cells[-1 if nb.cells[-1].cell_type == "code" else -2].outputs
                       if o.output_type == "stream")
        lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
        assert lines, f"{name}: no RESULT line in the last code cell's output:\n{text}"
        return nb, json.loads(lines[-1][len("RESULT "):])

    yield run, work


def _errors(nb: dict) -> list[str]:
    return [o.get("ename", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


@pytest.mark.slow
def test_quickstart(run_notebook) -> None:
    run, work = run_notebook
    nb, res = run("quickstart.ipynb")
    assert not _errors(nb)
    assert 0.0 <= res["success_rate"] <= 1.0 and res["n_episodes"] == 4
    assert (work / res["checkpoint"] / "manifest.json").exists() and Path(res["video"]).stat().st_size > 1000
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "display_data"]
    assert any("image/png" in o["data"] for o in shown) and any("text/html" in o["data"] for o in shown)


@pytest.mark.slow
def test_finetuning(run_notebook) -> None:
    run, work = run_notebook
    nb, res = run("finetuning.ipynb")
    assert not _errors(nb)
    assert 0.0 <= res["before"] <= 1.0 and 0.0 <= res["after"] <= 1.0
    assert res["env_steps"] >= 500 and res["curve_points"] >= 2
    assert (work / res["final_checkpoint"] / "manifest.json").exists()


@pytest.mark.slow
def test_deployment(run_notebook) -> None:
    run, work = run_notebook
    nb, res = run("deployment.ipynb")
    assert not _errors(nb)
    assert 0.0 <= res["success_rate"] <= 1.0 and res["n_episodes"] == 2 and res["frames"] > 10
    deployed = json.loads((work / res["deploy_json"]).read_text())
    assert deployed["inference"] == "remote" and deployed["latency_ms_p50"] is not None
    assert (work / res["dataset"] / "meta" / "info.json").exists()


def test_notebooks_are_committed_without_outputs() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them before committing"
