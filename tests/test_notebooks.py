"""Every notebook runs top to bottom on a tiny trained run and saves its plots."""

import pytest

from ldlm.stages.notebooks import NOTEBOOKS_DIR, run_notebooks

PLOTS = {"latent_geometry": ["latent_projection.png", "accuracy_vs_noise.png",
                             "latent_dimensions.png"],
         "denoising": ["denoising_accuracy.png", "guidance_vs_topic_accuracy.png"],
         "quickstart": []}


def test_the_notebook_list_is_known():
    assert sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.py")) == sorted(PLOTS)


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_notebook_executes_on_a_tiny_run(tiny_dit, name):
    _, run_dir, _ = tiny_dit
    [path] = run_notebooks(run_dir, [name], env={"LDLM_BUDGETS": "1,4",
                                                 "LDLM_SAMPLES_PER_TOPIC": "2",
                                                 "LDLM_MAX_BLOCKS": "200",
                                                 # latent_geometry: two spaces side by side
                                                 "LDLM_COMPARE_RUN": str(run_dir)})
    assert path.stat().st_size > 0
    import nbformat
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert outputs and not any(o.get("output_type") == "error" for o in outputs)
    for plot in PLOTS[name]:
        assert (run_dir / "notebooks" / plot).stat().st_size > 5_000
