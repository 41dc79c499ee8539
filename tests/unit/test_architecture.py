"""The package layers and their import rules (DESIGN §9), checked on every import.

Every ``import`` in the package is read from the source (imports inside functions included)
and mapped to the part of the tree it lives in. A part may import the parts listed below it
in :data:`LAYERS`, and its own modules; never a part above it, nor a part beside it that
:data:`INDEPENDENT` keeps apart. Module-level imports must also form no cycle: a cycle is an
``ImportError`` waiting for the import order that triggers it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers.paths import REPO

PACKAGE = "fedmuscle_secure"
#: Where each installed package's source lives (pyproject.toml's package-dir mapping).
SOURCES = {PACKAGE: REPO / "fedmuscle_secure", f"{PACKAGE}.crypto": REPO / "crypto",
           f"{PACKAGE}.server": REPO / "server", f"{PACKAGE}.client": REPO / "client"}
GENERATED = f"{PACKAGE}.transport.wire_pb"

#: The root modules that are the project's vocabulary: every layer may use them.
VOCABULARY = {"config", "config_data", "config_deployment", "config_weights", "config_yaml", "messages", "seeding",
              "models", "durable", "methods", "__init__"}

#: The deployment processes: the gRPC server and client, which build a federation member
#: from a config (through ``federation``) and keep a run directory (through ``experiment``),
#: sit above both; the state machines they drive sit below.
PROCESSES = {"server.grpc": "server process", "client.grpc": "client process"}

#: Top to bottom. A part imports only parts on a lower line (or itself).
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"compare"},
    {"server process", "client process"},
    {"experiment"},
    {"simulator"},
    {"provision"},
    {"federation"},
    {"server", "client"},
    {"records", "transport", "console"},
    {"baselines"},
    {"losses", "dp", "data"},
    {"vocabulary"},
    {"crypto"},
    {"errors"},
]
#: Parts on one line that must not import each other.
INDEPENDENT = [{"server process", "client process"}, {"server", "client"}, {"records", "transport", "console"},
               {"losses", "dp", "data"}]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if name.startswith(GENERATED) or any(p.startswith(".") for p in rel.parts):
                continue
            found[name] = path
    return found


MODULES = _modules()


def part_of(module: str) -> str:
    """The layer part a module belongs to."""
    rest = module.removeprefix(PACKAGE).lstrip(".")
    for prefix, part in PROCESSES.items():
        if rest == prefix or rest.startswith(prefix + "."):
            return part
    head = rest.split(".")[0] if rest else "__init__"
    if head == "errors":
        return "errors"
    if head in VOCABULARY:
        return "vocabulary"
    return head


def _resolve(name: str) -> str | None:
    """The project module an import name refers to (a module, or the module defining it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(module, line, at_import_time)`` for every project import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            lazy = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
                isinstance(child, ast.If) and _type_checking(child))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{a.name}" for a in child.names]
            else:
                names = []
            for name in names:
                if name.split(".")[0] == PACKAGE and (target := _resolve(name)):
                    found.append((target, child.lineno, eager))
            visit(child, eager and not lazy)

    visit(tree, True)
    return found


GRAPH = {module: imports(path) for module, path in MODULES.items()}


def _level(part: str) -> int:
    for i, parts in enumerate(LAYERS):
        if part in parts:
            return i
    raise AssertionError(f"part {part!r} is in no layer of tests/test_architecture.py")


def _where(module: str) -> Path:
    """The module's file, relative to the repository when it lies inside it."""
    path = MODULES[module]
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def layer_violations() -> list[str]:
    bad = []
    for module, targets in GRAPH.items():
        src = part_of(module)
        for target, line, _ in targets:
            dst = part_of(target)
            if src == dst:
                continue
            upward = _level(dst) < _level(src)
            sideways = _level(dst) == _level(src) and any(
                {src, dst} <= group for group in INDEPENDENT)
            if upward or sideways:
                bad.append(f"{_where(module)}:{line}: {src} imports {target} ({dst}"
                           f"{' is above it' if upward else ' is independent of it'})")
    return sorted(set(bad))


def cycles() -> list[list[str]]:
    """Strongly connected components of the import-time graph with more than one module."""
    eager = {m: sorted({t for t, _, now in ts if now and t != m}) for m, ts in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in eager[v]:
            if w not in index:
                strongconnect(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in eager:
        if v not in index:
            strongconnect(v)
    return found


#: The rules of DESIGN §9 one by one, each as (rule, the parts it constrains, the parts they
#: may import besides themselves). The layer test above implies them all; each is kept as
#: its own test so a failure names the rule broken.
ALL_PARTS = set().union(*LAYERS)
ROLES = {"server", "client", "server process", "client process"}
CONTRACTS: list[tuple[str, set[str], set[str]]] = [
    ("crypto imports errors only", {"crypto"}, {"errors"}),
    ("the vocabulary imports no layer (config does no layer checks)", {"vocabulary"},
     {"crypto", "errors"}),
    ("losses, dp and data import the vocabulary only", {"losses", "dp", "data"},
     {"vocabulary", "crypto", "errors"}),
    ("baselines import the vocabulary, losses, dp and data only", {"baselines"},
     {"losses", "dp", "data", "vocabulary", "crypto", "errors"}),
    ("transport never imports a role, the assembly, a driver or the command line",
     {"transport"}, {"vocabulary", "crypto", "errors"}),
    ("records and console import only what lies below them", {"records", "console"},
     {"baselines", "losses", "dp", "data", "vocabulary", "crypto", "errors"}),
    ("client never imports server", {"client", "client process"},
     ALL_PARTS - {"server", "server process", "cli", "__main__", "compare"}),
    ("server never imports client", {"server", "server process"},
     ALL_PARTS - {"client", "client process", "cli", "__main__", "compare"}),
    ("the state machines' roles never import the assembly or a driver", {"server", "client"},
     ALL_PARTS - ROLES - {"federation", "provision", "simulator", "experiment", "compare", "cli",
                          "__main__"}),
    ("only the processes, drivers and provisioning build through federation",
     ALL_PARTS - {"federation", "server process", "client process", "simulator", "experiment",
                  "provision", "compare", "cli", "__main__"},
     ALL_PARTS - {"federation", "server process", "client process", "simulator", "experiment",
                  "provision", "compare", "cli", "__main__"}),
    ("nothing imports cli", ALL_PARTS - {"cli", "__main__"}, ALL_PARTS - {"cli", "__main__"}),
]


def contract_violations(sources: set[str], allowed: set[str]) -> list[str]:
    bad = []
    for module, targets in GRAPH.items():
        src = part_of(module)
        if src not in sources:
            continue
        for target, line, _ in targets:
            dst = part_of(target)
            if dst != src and dst not in allowed:
                bad.append(f"{_where(module)}:{line}: {src} imports {target} ({dst})")
    return sorted(set(bad))


@pytest.mark.parametrize("rule,sources,allowed", CONTRACTS, ids=[c[0] for c in CONTRACTS])
def test_contract(rule, sources, allowed):
    bad = contract_violations(sources, allowed)
    assert not bad, f"{rule}:\n" + "\n".join(bad)


def test_the_readme_layout_names_every_package():
    """Every package of the tree is named in the README's layout section."""
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    packages = {path.parent for path in MODULES.values() if path.name == "__init__.py"}
    missing = sorted(str(p.relative_to(REPO)) for p in packages
                     if p.name + "/" not in layout and "wire_pb" not in p.parts)
    assert not missing, f"README 'Layout' does not name: {missing}"


def test_every_part_is_in_a_layer():
    parts = {part_of(m) for m in MODULES}
    assert parts <= set().union(*LAYERS), parts - set().union(*LAYERS)


def test_no_part_imports_a_part_above_it_or_an_independent_one():
    bad = layer_violations()
    assert not bad, "imports against the layers of DESIGN §9:\n" + "\n".join(bad)


def test_module_level_imports_form_no_cycle():
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


# --- the checker itself: it must see what it is meant to forbid ---------------------------

@pytest.fixture
def scratch(monkeypatch, tmp_path):
    """Two fake modules added to the scanned graph."""
    added: list[str] = []

    def add(name: str, source: str) -> None:
        path = tmp_path / (name.replace(".", "_") + ".py")
        path.write_text(source)
        monkeypatch.setitem(MODULES, name, path)
        added.append(name)
        for each in added:  # re-read all: an import resolves only once its target exists
            monkeypatch.setitem(GRAPH, each, imports(MODULES[each]))
    return add


def test_checker_sees_an_upward_import_inside_a_function(scratch):
    scratch("fedmuscle_secure.crypto.fake", "def f():\n    from fedmuscle_secure.cli import main\n")
    assert any(": crypto imports fedmuscle_secure.cli.main (cli is above it)" in v
               for v in layer_violations())


def test_checker_sees_client_importing_server(scratch):
    scratch("fedmuscle_secure.client.fake", "import fedmuscle_secure.server.state\n")
    assert any(": client imports fedmuscle_secure.server.state (server is independent of it)"
               in v for v in layer_violations())


def test_checker_sees_a_cycle_but_not_a_deferred_import(scratch):
    scratch("fedmuscle_secure.fake_a", "from fedmuscle_secure.fake_b import x\n")
    scratch("fedmuscle_secure.fake_b", "def f():\n    from fedmuscle_secure.fake_a import y\n")
    assert not any("fedmuscle_secure.fake_a" in c for c in cycles())
    scratch("fedmuscle_secure.fake_b", "import fedmuscle_secure.fake_a\n")
    assert ["fedmuscle_secure.fake_a", "fedmuscle_secure.fake_b"] in cycles()
