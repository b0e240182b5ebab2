"""Check the built distributions (DIST holds one wheel and one sdist) against
the source tree (CHECKOUT): the wheel holds every file of src/poolguard and
nothing but the package and its metadata; the sdist holds what building the
wheel needs and no tests; the metadata is what an index shows."""
from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import List, Set

import trove_classifiers

PYTHONS = [f"3.{minor}" for minor in range(10, 16)]
EXTRAS = {"joblib", "progress", "dask"}


def package_files(checkout: Path) -> Set[str]:
    """src/poolguard's files as the wheel names them (poolguard/...)."""
    src = checkout / "src"
    return {str(p.relative_to(src)) for p in (src / "poolguard").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def check_wheel(wheel: Path, expected: Set[str], problems: List[str]) -> str:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(info).decode()
    package = {n for n in names if n.startswith("poolguard/")}
    other = {n for n in names - package if ".dist-info/" not in n}
    for name in sorted(expected - package):
        problems.append(f"wheel lacks {name}")
    for name in sorted(package - expected):
        problems.append(f"wheel has {name}, which src/poolguard does not")
    for name in sorted(other):
        problems.append(f"wheel has {name}, outside the package")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("wheel has no LICENSE")
    return metadata


def check_sdist(sdist: Path, expected: Set[str], problems: List[str]) -> None:
    with tarfile.open(sdist) as t:
        names = {n.partition("/")[2] for n in t.getnames()}
    for name in ["pyproject.toml", "README.md", "LICENSE", "PKG-INFO"]:
        if name not in names:
            problems.append(f"sdist lacks {name}")
    for name in sorted(expected):
        if f"src/{name}" not in names:
            problems.append(f"sdist lacks src/{name}")
    for name in sorted(names):
        if name.split("/")[0] in ("tests", "benchmarks", "examples", ".ci", "docs"):
            problems.append(f"sdist has {name}")


def check_metadata(text: str, problems: List[str]) -> None:
    meta = Parser().parsestr(text)
    if meta["Name"] == "poolguard":
        problems.append("the distribution is named poolguard: that name on PyPI is "
                        "another project's")
    if meta["License-Expression"] != "MIT":
        problems.append(f"License-Expression is {meta['License-Expression']!r}")
    classifiers = meta.get_all("Classifier") or []
    for c in classifiers:
        if c not in trove_classifiers.classifiers:
            problems.append(f"unknown classifier {c!r}")
    wanted = ["Typing :: Typed"] + [f"Programming Language :: Python :: {v}" for v in PYTHONS]
    for c in wanted:
        if c not in classifiers:
            problems.append(f"no classifier {c!r}")
    extras = set(meta.get_all("Provides-Extra") or [])
    if extras != EXTRAS:
        problems.append(f"extras published: {sorted(extras)}, not {sorted(EXTRAS)}")
    if not meta.get_all("Project-URL"):
        problems.append("no project URLs")
    if meta["Requires-Python"] != ">=3.10":
        problems.append(f"Requires-Python is {meta['Requires-Python']!r}")


def main() -> int:
    dist, checkout = Path(sys.argv[1]), Path(sys.argv[2])
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        sys.exit(f"{dist} holds {len(wheels)} wheels and {len(sdists)} sdists, not one each")
    expected = package_files(checkout)
    problems: List[str] = []
    check_metadata(check_wheel(wheels[0], expected, problems), problems)
    check_sdist(sdists[0], expected, problems)
    for p in problems:
        print(p)
    print(f"{wheels[0].name}: {len(expected)} package files; {sdists[0].name}: "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
