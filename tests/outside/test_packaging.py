"""What users install: the wheel holds every module of src/poolguard, and no
install line names the bare "poolguard" on PyPI (an unrelated project).
The whole user path (built wheel, fresh venv, README quick start) is
.ci/parts/20-user."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from scripts import CHECKOUT

SRC = CHECKOUT / "src" / "poolguard"


def package_files() -> set:
    return {str(p.relative_to(SRC.parent)) for p in SRC.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_wheel_holds_every_file_of_the_package(tmp_path):
    import setuptools
    major = int(setuptools.__version__.split(".")[0])
    assert major >= 77, f"setuptools {setuptools.__version__}: the test group wants >= 77"
    tree = tmp_path / "tree"   # a copy: the build writes build/ and egg-info beside it
    tree.mkdir()
    for name in ["pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"]:
        shutil.copy(CHECKOUT / name, tree / name)
    shutil.copytree(SRC, tree / "src" / "poolguard",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                           "--no-build-isolation", "--no-index", "-w", str(tmp_path / "out"),
                           str(tree)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "out").glob("*.whl")
    assert wheel.name.startswith("poolguard_mp-")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = {n for n in names if n.startswith("poolguard/")}
    assert package == package_files()
    assert {n.split("/")[0] for n in names - package} == {wheel.name.split("-py3")[0]
                                                          + ".dist-info"}
    assert "poolguard/py.typed" in package


INSTALL_BARE = re.compile(r"pip install\s+['\"]?poolguard(?=[\[\s'\"`]|$)", re.MULTILINE)


@pytest.mark.parametrize("pattern", ["README.md", "docs/**/*.md", "docs/**/*.rst",
                                     "src/**/*.py", "examples/*.py", "benchmarks/*.py"])
def test_no_install_line_names_the_bare_pypi_name(pattern):
    for path in CHECKOUT.glob(pattern):
        found = INSTALL_BARE.findall(path.read_text())
        assert not found, f"{path.relative_to(CHECKOUT)}: {found}"
