"""The package's import graph follows its layers: each layer imports only the layers below it
(README, "Layout"). Read from the source with `ast`, so nothing is imported."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "ldlm"

# Module prefix -> layer. The first matching prefix wins; top-level modules not listed are
# the core (config, errors, mesh, run directories, checkpoints, logs), below everything.
LAYERS = {
    "ldlm.__main__": "cli",
    "ldlm.data": "data",
    "ldlm.models": "models",
    "ldlm.diffusion": "diffusion",
    "ldlm.priors": "priors",
    "ldlm.inference": "inference",
    "ldlm.train": "train",
    "ldlm.eval": "eval",
    "ldlm.stages": "stages",
    "ldlm.cli": "cli",
}
BELOW = {
    "core": set(),
    "data": {"core"},
    "models": {"core", "data"},
    "diffusion": {"core", "data", "models"},
    # each kind of prior: its network, training objective and latents-level sampler
    "priors": {"core", "data", "models", "diffusion"},
    "inference": {"core", "data", "models", "diffusion", "priors"},
    "train": {"core", "data", "models", "diffusion", "priors"},  # never inference
    "eval": {"core", "data", "models", "diffusion", "priors", "inference"},  # never train
    "stages": {"core", "data", "models", "diffusion", "priors", "inference", "train", "eval"},
    "cli": {"core", "data", "models", "diffusion", "priors", "inference", "train", "eval",
            "stages"},
    "api": {"inference"},  # ldlm/__init__.py: the public names
}
# Imports inside a function are allowed only to keep a heavy, optional dependency out of
# import time (plotting, notebooks, TensorBoard, TFDS, MAUVE, scikit-learn), and in the
# package's __init__ and the command line, which keep `import ldlm` and `ldlm --help` free
# of jax.
LAZY_ALLOWED = ("matplotlib", "jupytext", "nbclient", "nbformat", "tensorboardX",
                "tensorflow_datasets", "absl", "mauve", "sklearn", "scipy",
                "ldlm.data.bbc_news")  # the TFDS builder: imports tensorflow_datasets
LAZY_LAYERS = ("api", "cli")


def module_name(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module == "ldlm":
        return "api"
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "core"


def imports_of(tree: ast.Module, module: str):
    """(imported module, line, inside a function) for every import statement."""
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(module.split(".")[:len(module.split(".")) - node.level]
                                + ([base] if base else []))
            # `from ldlm import rundir` imports the module ldlm.rundir
            names = [f"{base}.{a.name}" if base in ("ldlm",) + tuple(LAYERS) else base
                     for a in node.names]
        else:
            continue
        for name in names:
            yield name, node.lineno, id(node) in in_function


def violations(package: pathlib.Path = PACKAGE) -> list[str]:
    out: list[str] = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        src_layer = layer_of(module)
        for name, line, lazy in imports_of(ast.parse(path.read_text()), module):
            where = f"{path.relative_to(package.parent)}:{line}"
            if lazy and src_layer not in LAZY_LAYERS and not name.startswith(LAZY_ALLOWED):
                out.append(f"{where} imports {name} inside a function")
            if not name.startswith("ldlm"):
                continue
            dst_layer = layer_of(name)
            if dst_layer != src_layer and dst_layer not in BELOW[src_layer]:
                out.append(f"{where} ({src_layer}) imports {name} ({dst_layer})")
    return list(dict.fromkeys(out))  # one line per import, however many names it brings


def test_every_layer_imports_only_the_layers_below_it():
    found = violations()
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_the_rule_catches_an_upward_import(tmp_path):
    bad = tmp_path / "ldlm"
    (bad / "models").mkdir(parents=True)
    (bad / "train").mkdir()
    (bad / "models" / "vae.py").write_text("from ldlm.train import loop\n")
    (bad / "train" / "dit.py").write_text(
        "def f():\n    from ldlm.inference.generation import Pipeline\n")
    found = violations(bad)
    assert len(found) == 3, found  # models -> train; train -> inference; and it is lazy
    assert any("models/vae.py:1 (models) imports ldlm.train.loop (train)" in f for f in found)


def test_no_cycles_between_modules():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        graph[module] = {n for n, _, _ in imports_of(ast.parse(path.read_text()), module)
                         if n in _modules()}

    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph.get(m, ()):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, n]))
            if n not in state:
                visit(n, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def _modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}
