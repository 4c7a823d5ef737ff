"""The layout rules of DESIGN 2, read from the code: no import circles inside the library, dvc stages that depend on
every library module their command imports (so that no output can go stale when code changes), one name per job (the
dvc stage, its params block and the block its command reads), and kfp components named after dvc stages.

Imports are read with `ast`, lazy ones inside functions included; an import names the module it loads
(`from relightful.data import shards` is `relightful.data.shards`, `from relightful.data.shards import MANIFEST`
is `relightful.data.shards`). Nothing here imports the modules it checks, except the CLI parser for its commands and
the commands of the dvc stages, run up to the params block they read.
"""

from __future__ import annotations

import ast
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "relightful"
CLI = f"{PACKAGE}.cli"


# --- the import graph ----------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def module_files() -> dict[str, Path]:
    """Every module of the library by dotted name (a package by its `__init__.py`)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str) -> bool:
    return module_files()[name].name == "__init__.py"


def _imports_in(node: ast.AST, module: str) -> set[str]:
    """The library modules imported anywhere under `node` (in functions too) of `module`."""
    modules = module_files()
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:  # relative: resolve against the importing module's package
                base = module.split(".")
                base = base[:len(base) - n.level + (1 if _is_package(module) else 0)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in n.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import relightful.x.y` of an attribute: its module
                name = name.rpartition(".")[0]
            if name.split(".")[0] == PACKAGE and name in modules and name != module:
                found.add(name)
    return found


@lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module:
    return ast.parse(module_files()[module].read_text(), str(module_files()[module]))


@lru_cache(maxsize=None)
def import_graph() -> dict[str, frozenset[str]]:
    return {m: frozenset(_imports_in(_tree(m), m)) for m in module_files()}


def import_cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def closure(roots: set[str]) -> set[str]:
    """`roots` and every library module they import, directly or not, with the packages above each (whose
    `__init__.py` runs first)."""
    graph, seen, todo = import_graph(), set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += graph[m]
    return seen


def test_the_cycle_finder_finds_cycles():
    assert import_cycles({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset()}) \
        == [["a", "b", "c"]]
    assert import_cycles({"a": frozenset({"a"})}) == [["a"]]
    assert import_cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_lazy_and_from_imports_are_edges():
    graph = import_graph()
    assert "relightful.tracking.model_uri" in graph["relightful.cli.inference"]  # inside cmd_harmonize
    assert "relightful.data.shards" in graph["relightful.cli.data"]        # at module level


def test_no_import_circles():
    cycles = import_cycles(import_graph())
    assert not cycles, "import circles in src/relightful (lazy imports count): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_the_library_never_imports_the_cli():
    for module, imported in import_graph().items():
        if not _is_cli(module) and module != "relightful.__main__":  # `python -m relightful` is the CLI's entry
            assert not any(_is_cli(m) for m in imported), f"{module} imports the CLI (DESIGN 2: arrows point down)"


def test_models_load_folders_only():
    """DESIGN 2: `tracking/` is the only library package that imports mlflow; models/ loads folders, the CLI
    resolves `models:/` URIs."""
    for module in module_files():
        if module.startswith(f"{PACKAGE}.models"):
            assert not any(m.startswith(f"{PACKAGE}.tracking") for m in import_graph()[module]), module


# --- dvc deps cover each stage's import closure --------------------------------------------------------------------

def _is_cli(module: str) -> bool:
    return module == CLI or module.startswith(CLI + ".")


def command_modules(command: str) -> set[str]:
    """The library modules that `relightful COMMAND` runs: the CLI package (the entry point loads every command
    module, with their module-level imports), the lazy imports of the command's function and of the CLI functions
    it calls, and everything those import (lazy imports included), with the packages above them."""
    from relightful.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    func = sub.choices[command].get_default("func")
    cli_modules = {m for m in module_files() if _is_cli(m)}
    roots = set()
    functions = {}  # (module, name) -> node, for every function of the CLI modules
    for m in cli_modules:
        top = ast.Module(body=[s for s in _tree(m).body if not isinstance(s, (ast.FunctionDef, ast.ClassDef))],
                         type_ignores=[])
        roots |= _imports_in(top, m)
        functions.update({(m, n.name): n for n in ast.walk(_tree(m)) if isinstance(n, ast.FunctionDef)})
    called, todo = set(), [func.__name__]
    while todo:  # the command's function and the CLI functions it calls by name, transitively
        name = todo.pop()
        for key in [k for k in functions if k[1] == name and k not in called]:
            called.add(key)
            roots |= _imports_in(functions[key], key[0])
            todo += [n.id for n in ast.walk(functions[key]) if isinstance(n, ast.Name)]
    return cli_modules | closure({r for r in roots if not _is_cli(r)})


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_dvc_deps_cover_the_code_of_each_stage(stage: str):
    spec = _stages()[stage]
    argv = shlex.split(spec["cmd"])
    assert argv[0] == "relightful", f"{stage}: the command is not a relightful job"
    deps = [str(d) for d in spec.get("deps", [])]
    needed = command_modules(argv[1])
    missing = sorted(str(module_files()[m].relative_to(ROOT)) for m in needed
                     if not _covered(module_files()[m], deps))
    assert not missing, f"dvc.yaml stage {stage} runs code it does not depend on (add these, or a folder above): " \
                        f"{missing}"
    for d in deps:  # and a code dep that is not there is a typo
        if d.startswith("src/"):
            assert (ROOT / d).exists(), f"{stage}: dep {d} does not exist"


def test_synthetic_stage_depends_on_the_whole_light_stage():
    assert "src/relightful/lightstage" in _stages()["synthetic_stage"]["deps"]


# --- one name per job: each dvc stage reads the params block of its own name ---------------------------------------

PROFILE = "${profile}."
SHARED_BLOCKS = {"model", "train"}  # read by the training stages (train_stageN over the shared train block)
# The other blocks a stage may read besides its own (and the shared ones for training), and why.
OTHER_BLOCKS = {
    "validate_data": {"render_pairs.plan.fov_range"},  # the FoV range the pairs were rendered with, not a copy of it
}


def _blocks_read(stage: str) -> set[str]:
    """The params of the active profile that dvc.yaml lists for `stage`, without the `${profile}.` prefix."""
    params = [str(p) for p in _stages()[stage].get("params", [])]
    assert "profile" in params, f"{stage}: depends on the active profile's name"
    others = [p for p in params if p != "profile"]
    assert all(p.startswith(PROFILE) for p in others), f"{stage}: params outside the active profile: {others}"
    return {p[len(PROFILE):] for p in others}


def _allowed_blocks(stage: str) -> set[str]:
    return {stage} | OTHER_BLOCKS.get(stage, set()) | (SHARED_BLOCKS if stage.startswith("train_stage") else set())


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_each_dvc_stage_depends_on_the_params_block_of_its_name(stage: str):
    read = _blocks_read(stage)
    assert stage in read, f"dvc.yaml stage {stage} does not depend on ${{profile}}.{stage}"
    assert read <= _allowed_blocks(stage), \
        f"{stage} reads {sorted(read - _allowed_blocks(stage))}: name its own block, or say why in OTHER_BLOCKS"


def test_each_profile_has_one_block_per_stage():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    profiles = [k for k, v in params.items() if isinstance(v, dict)]
    assert {"tiny", "gpu", "smoke"} <= set(profiles)
    for profile in profiles:
        assert set(params[profile]) == set(_stages()) | SHARED_BLOCKS, \
            f"params.yaml profile {profile}: blocks {sorted(set(params[profile]) ^ (set(_stages()) | SHARED_BLOCKS))}" \
            f" are not (or miss) a dvc stage's name"


class _BlockRead(Exception):
    """Raised by the fake `load_section` at the first block the job reads that is not a shared one."""


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_each_job_reads_the_params_block_of_its_stage(stage: str, monkeypatch):
    """The command of the stage, run with a `load_section` that records the blocks asked for, asks for the block of
    the stage's name (after the shared ones, for training) before it does anything else."""
    import relightful.config
    from relightful.cli import build_parser

    asked = []

    def load_section(path, section, profile=None):
        asked.append(section)
        if section in SHARED_BLOCKS:
            return {}
        raise _BlockRead(section)

    monkeypatch.setattr(relightful.config, "load_section", load_section)
    args = build_parser().parse_args(shlex.split(_stages()[stage]["cmd"])[1:])
    with pytest.raises(_BlockRead):
        args.func(args)
    assert asked[-1] == stage and set(asked[:-1]) <= SHARED_BLOCKS, f"{stage}: the job read {asked}"


# The library module that holds each job is named after it (`relightful.data.render_pairs`), but for these, and why.
JOB_MODULES = {
    "augment": "relightful.augment.augment_pairs",  # relightful.augment.augment would only repeat its package's name
    "promote": "relightful.tracking.promotion",     # the champion gate, the only job of tracking/
    **{f"train_stage{n}": "relightful.training.loop" for n in (1, 2, 3)},  # one training loop, the stage a parameter
}


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_each_job_lives_in_a_module_of_its_name(stage: str):
    named = [m for m in module_files() if m.rpartition(".")[2] == stage and not _is_cli(m)]
    module = JOB_MODULES.get(stage)
    if module is None:
        assert len(named) == 1, f"{stage}: no library module of its name (or more than one): {named}"
        module = named[0]
    else:
        assert module in module_files(), f"{stage}: {module} (JOB_MODULES) does not exist"
    argv = shlex.split(_stages()[stage]["cmd"])
    assert module in command_modules(argv[1]), f"{stage}: `relightful {argv[1]}` does not run {module}"


# --- kfp components are named after dvc stages ---------------------------------------------------------------------

# Components that are not a whole dvc stage: the parallel form of one, or a step of the kfp DAG only.
COMPONENT_ROLES = {
    "render_pairs_part": "render_pairs",    # one worker's shards of render_pairs
    "merge_pairs": "render_pairs",          # its merge, once all workers are done (render-pairs --merge)
    "train_stage": "train_stage1",          # train_stage{1,2,3}: the stage is a parameter of the component
    "train_stage_across_nodes": "train_stage1",  # the same as a PyTorchJob over several pods
    "worker_indices": None,                 # a helper of the DAG: the indices of the render workers
    "retrain_check": None,                  # the retrain decision before training (a step of the kfp DAG only)
}


def _component_names() -> set[str]:
    """The names of the functions decorated as kfp components in components/ (read from the code)."""
    names = set()
    for path in sorted((ROOT / "components").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    "component" in ast.unparse(d).split("(")[0] for d in node.decorator_list):
                names.add(node.name)
    return names


def test_each_component_is_a_dvc_stage():
    names, stages = _component_names(), set(_stages())
    assert {"starter_data", "augment", "evaluate"} <= names  # the reader finds the components
    for name in sorted(names):
        if name in COMPONENT_ROLES:
            role = COMPONENT_ROLES[name]
            assert role is None or role in stages, f"component {name}: stage {role} is not in dvc.yaml"
        else:
            assert name in stages, f"component {name} has no dvc stage of its name (or a role in COMPONENT_ROLES)"
    assert stages - {"train_stage2", "train_stage3"} <= names | {r for r in COMPONENT_ROLES.values() if r}, \
        f"dvc stages without a component: {sorted(stages - names)}"
