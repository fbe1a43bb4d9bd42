"""The packages of semlens form layers: each imports only the ones below it, and no modules import each other
in a circle. Read from the source (every import, at the top or inside a function; ``TYPE_CHECKING`` blocks
left out, as they never run), so a new upward import fails here before it tangles the layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import semlens

SOURCE = Path(semlens.__file__).parent

#: bottom to top: the helpers; the pure analyses; the Lens format, probe data and models under study; foundation
#: models and relevance; analyses that run models; the Lens; the build that writes one; what presents Lenses; the
#: concept world and the explorer; the command line. A package imports only packages of lower layers.
LAYERS = (
    ("_util", "assets"),
    ("analysis",),
    ("store", "data", "model"),
    ("foundation", "relevance"),
    ("interventions",),
    ("lens",),
    ("pipeline",),
    ("report",),
    ("world", "web"),
    ("cli",),
)
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imported_modules(path: Path) -> set[str]:
    """The semlens modules ``path`` imports, resolved to module names (a name imported from a package counts as
    the package's submodule where one of that name exists)."""
    module, tree = module_name(path), ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("semlens"))
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            if target.startswith("semlens"):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(
                        sub
                        if (SOURCE.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (SOURCE.parent / Path(*sub.split("."))).is_dir()
                        else target
                    )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module of semlens with the modules it imports."""
    return {module_name(path): imported_modules(path) for path in sorted(SOURCE.rglob("*.py"))}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (SOURCE / parts[1]).is_dir()) else None


def test_every_package_has_a_layer() -> None:
    packages = {path.name for path in SOURCE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert packages == set(RANK), f"place each package in LAYERS: {sorted(packages ^ set(RANK))}"


def test_packages_import_only_lower_layers() -> None:
    upward = []
    for source, targets in import_graph().items():
        for target in targets:
            above, below = package_of(source), package_of(target)
            if above is None or below is None or above == below:
                continue  # the top-level modules (semlens, semlens.cli's entry) may import anything
            if RANK[below] >= RANK[above]:
                upward.append(f"{source} -> {target}")
    assert not upward, "imports at or above their own layer:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_through_others() -> None:
    inner = {
        module: {target for target in targets if package_of(target)}
        for module, targets in import_graph().items()
        if package_of(module)
    }
    try:  # semlens/__init__.py re-exports from everywhere and is left out: nothing inside imports it
        TopologicalSorter(inner).prepare()
    except CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


@pytest.mark.parametrize("module", ["semlens.lens.search", "semlens.store.files"])
def test_the_graph_sees_imports(module: str) -> None:
    """The test above would pass on an empty graph: check it reads real edges."""
    assert import_graph()[module]


def test_importing_semlens_leaves_the_heavy_stacks_for_when_they_are_used() -> None:
    """``import semlens`` runs before every command's first line (``semlens --help`` too) and in every notebook: zennit
    (which imports torchvision's models: seconds) and the optional stacks load when they are used, not with it."""
    code = (
        "import sys, semlens, semlens.cli; heavy = ('zennit', 'torchvision.models', 'transformers', 'open_clip', 'timm', "
        "'sklearn', 'umap', 'fastapi', 'plotly'); print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(heavy)}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
