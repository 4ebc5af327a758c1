"""The rooms stay clean: one-way imports, sweeps' internals stay inside sweeps/, no path hacks."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "sweeps", "serve", "benchmarks", "tests")


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((REPO / folder).rglob("*.py"))]


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


@pytest.mark.parametrize(
    "room, forbidden",
    [("trainers", ("ray", "sweeps", "serve")), ("serve", ("sweeps",)), ("sweeps", ("serve",))],
)
def test_imports_flow_one_way(room, forbidden):
    for path in python_files(room):
        for module, _ in imports(path):
            assert module.split(".")[0] not in forbidden, (
                f"{path.relative_to(REPO)} imports {module}"
            )


def test_nothing_outside_sweeps_uses_its_private_names_or_tunes_folders():
    outside = [p for p in python_files(*PACKAGES) if "sweeps" not in p.relative_to(REPO).parts[:1]]
    for path in outside:
        for module, names in imports(path):
            if module.split(".")[0] == "sweeps":
                private = [n for n in [module.split(".")[-1], *names] if n.startswith("_")]
                assert not private, f"{path.relative_to(REPO)} imports {private} from {module}"
        text = path.read_text()
        assert not re.search(r"trial_\*|result\.json|baseline\.json", text), (
            f"{path.relative_to(REPO)} reads Tune's trial folders or the sweep's cache: use "
            "sweeps.trial_results / sweeps.run_sweep(baseline=...)"
        )


def test_no_sys_path_bootstraps():
    bootstrap = re.compile(r"sys\.path\.(insert|append)\(")
    for path in python_files(*PACKAGES):
        if path != Path(__file__):
            assert not bootstrap.search(path.read_text()), path.relative_to(REPO)


def test_no_import_cycle_between_trainers_modules():
    graph = {
        path.stem: {m.split(".")[1] for m, _ in imports(path) if m.startswith("trainers.")}
        for path in python_files("trainers")
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [m for m in graph if reaches(m, m, {m})]
    assert not cycles, f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize(
    "script",
    ["sweeps/run.py --help", "serve/app.py --help", "-m trainers.train --help"],
)
def test_the_mission_commands_run_from_a_checkout(script):
    done = subprocess.run(
        [sys.executable, *script.split()], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def test_the_installed_entry_points_exist():
    bin_dir = Path(sys.executable).parent
    for name in ("matryoshka-sweep", "matryoshka-train", "matryoshka-serve"):
        assert (bin_dir / name).is_file(), f"{name}: run make setup (pip install -e .)"


def test_no_two_modules_share_a_file_name():
    """Each job has its own file name across the packages (a package's config.py aside)."""
    seen: dict[str, Path] = {}
    for path in python_files("trainers", "sweeps", "serve", "benchmarks"):
        if path.name in ("__init__.py", "config.py"):
            continue
        assert path.name not in seen, f"{path.relative_to(REPO)} and {seen[path.name]}"
        seen[path.name] = path.relative_to(REPO)


@pytest.mark.parametrize("folder", ["sweeps", "serve", "benchmarks"])
def test_no_module_of_a_script_folder_shadows_the_standard_library(folder):
    # `python sweeps/run.py` puts sweeps/ first on sys.path: a sweeps/select.py would be what
    # every `import select` of the standard library gets.
    for path in python_files(folder):
        assert path.stem not in sys.stdlib_module_names, path.relative_to(REPO)


def module_imports(path: Path) -> set[str]:
    return {module for module, _ in imports(path)}


def test_serve_keeps_http_deployments_and_process_apart():
    serve_dir = REPO / "serve"
    # HTTP routes and maps errors: it neither deploys nor starts anything.
    assert not {"serve.deployments", "serve.app"} & module_imports(serve_dir / "ingress.py")
    # The deployments are started by someone else.
    deployments = serve_dir / "deployments.py"
    assert "serve.app" not in module_imports(deployments)
    assert not re.search(r"ray\.init|serve\.(run|start|shutdown)\(", deployments.read_text())
    # The process starts and stops: no HTTP framework in it.
    assert not any(m.split(".")[0] in ("fastapi", "starlette") for m in imports_of("serve/app.py"))
    # The contract and the arguments need neither Ray nor an HTTP framework.
    for name in ("api.py", "args.py"):
        roots = {m.split(".")[0] for m in module_imports(serve_dir / name)}
        assert not roots & {"ray", "fastapi", "starlette"}, name


def imports_of(relative: str) -> set[str]:
    return module_imports(REPO / relative)


def test_rendering_choosing_and_the_http_contract_import_no_ray():
    # One process for all four: each import is checked for what it alone pulled in.
    modules = ["sweeps.report", "sweeps.choose", "serve.args", "serve.api"]
    script = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "    print(m, 'ray' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [w for m in modules for w in (m, "False")], done.stdout
