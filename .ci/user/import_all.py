"""Import every module of poolguard's source tree (SRC, the checkout's
src/poolguard) from the installed distribution, and fail when one is missing
from it or is imported from anywhere else.  A module whose import needs an
optional dependency that is not installed is skipped, by name and reason,
unless --all is given (the extras are installed)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

# Top-level module an optional feature imports -> the extra that installs it.
EXTRAS = {"joblib": "joblib", "tqdm": "progress", "distributed": "dask", "dask": "dask"}


def module_names(src: Path) -> Iterator[str]:
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("src", type=Path)
    parser.add_argument("--all", action="store_true", help="skip nothing")
    args = parser.parse_args()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    imported = skipped = 0
    for name in module_names(args.src.resolve()):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").partition(".")[0]
            if args.all or top not in EXTRAS or importlib.util.find_spec(top) is not None:
                raise
            print(f"skipped {name}: needs {top} (the [{EXTRAS[top]}] extra), not installed")
            skipped += 1
            continue
        where = Path(module.__file__ or "?").resolve()
        if site not in where.parents:
            sys.exit(f"{name} was imported from {where}, not from the installed {site}")
        imported += 1
    print(f"imported {imported} modules of poolguard from {site}; skipped {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
