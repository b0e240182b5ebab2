"""The paths of the project's files that its docstrings, comments, README
and guide name exist: a module moved or split must not leave its old name
behind to mislead a reader."""
from __future__ import annotations

import ast
import re

import pytest

from scripts import CHECKOUT

# A name of a Python file, with the folders before it if any.
PATH = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.py)\b")
# Not files of the checkout: other people's in a traceback or a suite we
# fetch, a user's in an example, the script the demo writes.
OTHERS = {"ctypes/__init__.py", "home/me/step.py", "test_parallel.py", "murder_bot.py"}


def _ours() -> set[str]:
    return {str(p.relative_to(CHECKOUT)) for p in CHECKOUT.rglob("*.py")
            if not any(part.startswith(".") or part.endswith(".egg-info") for part in p.parts)}


def _texts() -> dict[str, str]:
    """What speaks of our files: the package's sources, README and guide,
    and each test module's docstring (tests name the scripts they write)."""
    texts = {str(p.relative_to(CHECKOUT)): p.read_text()
             for p in [*CHECKOUT.glob("src/poolguard/**/*.py"), CHECKOUT / "README.md",
                       *CHECKOUT.glob("docs/*.md")]}
    for p in CHECKOUT.glob("tests/**/test_*.py"):
        texts[str(p.relative_to(CHECKOUT))] = ast.get_docstring(ast.parse(p.read_text())) or ""
    return texts


def test_every_file_named_exists():
    if not (CHECKOUT / "src" / "poolguard").is_dir():
        pytest.skip("no checkout beside the tests")
    ours = _ours()
    missing = sorted(f"{where}: {name}" for where, text in _texts().items()
                     for name in set(PATH.findall(text))
                     if name not in OTHERS
                     and not any(path == name or path.endswith("/" + name) for path in ours))
    assert not missing, "\n".join(missing)


# A dotted name in poolguard's namespace: a module, or an attribute of one.
DOTTED = re.compile(r"(?<![\w.])poolguard(?:\.[A-Za-z_]\w*)+")


def _resolves(name: str) -> bool:
    import importlib
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_module_named_by_its_dotted_name_exists():
    """``poolguard.wire.buffers`` or ``poolguard.progress.ProgressInfo`` in a
    docstring, the README or the guide names a module or attribute that is
    there (``poolguard.py`` and other file names are the test above's)."""
    pytest.importorskip("dask")   # poolguard.cluster names it
    missing = sorted(f"{where}: {name}" for where, text in _texts().items()
                     for name in set(DOTTED.findall(text))
                     if not name.endswith((".py", ".md")) and not _resolves(name))
    assert not missing, "\n".join(missing)


def test_the_readme_maps_every_module_and_every_test_file():
    """The README's map of the code names each module of the package in its
    folder's block, and its table of the tests names each test file."""
    if not (CHECKOUT / "src" / "poolguard").is_dir():
        pytest.skip("no checkout beside the tests")
    readme = (CHECKOUT / "README.md").read_text()
    start = readme.index("```\nsrc/poolguard/")
    code_map = readme[start:readme.index("```\n", start + 4)]
    listed = set(re.findall(r"^\s+([\w/]+(?:\.py)?)\s", code_map, re.M))
    package = CHECKOUT / "src" / "poolguard"
    missing = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and p.name not in listed]
    tests = readme[readme.index("| folder | file | what |"):]
    missing += [str(p.relative_to(CHECKOUT)) for p in sorted(CHECKOUT.glob("tests/*/test_*.py"))
                if f"`{p.name}`" not in tests]
    assert not missing, "not in the README's maps: " + ", ".join(missing)
