"""What ``checkpoint=`` costs: the store alone (a put and a get an item, in
this process) and a ``map`` of ``x + 1`` over 1,000 items with no store, with
an empty store (every item stored) and a full one (every item read back).

    python benchmarks/bench_checkpoint.py [--rounds 5] [--items 1000] [--dir DIR]

DIR (default: a new temporary directory) is where the stores are made: a
local disk and NFS give very different figures.  Prints medians over rounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import poolguard                                   # noqa: E402
from poolguard import checkpoint as store_module   # noqa: E402
import work                                        # noqa: E402


def store_alone(root: str, items: int, **options: object) -> Dict[str, float]:
    """Microseconds an item for put (into an empty store) and get (hit)."""
    store = store_module.Store(root, "bench", store_module.load_key(None), **options)
    keys = [store.key((i,), {}) for i in range(items)]
    start = time.perf_counter()
    for i, key in enumerate(keys):
        assert key is not None and store.put(key, i + 1)
    put = time.perf_counter() - start
    start = time.perf_counter()
    for i, key in enumerate(keys):
        assert key is not None and store.get(key) == (True, i + 1)
    get = time.perf_counter() - start
    return {"put": put / items * 1e6, "get": get / items * 1e6}


def pool_map(pool: poolguard.Pool, root: str, items: int) -> Dict[str, float]:
    """Seconds for map without a store, into an empty store, from a full one."""
    out: Dict[str, float] = {}
    for name, checkpoint in (("none", None), ("first", root), ("stored", root)):
        start = time.perf_counter()
        assert pool.map(work.inc, range(items), checkpoint=checkpoint)[-1] == items
        out[name] = time.perf_counter() - start
    return out


def median_of(rounds: List[Dict[str, float]]) -> Dict[str, float]:
    return {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--no-map", action="store_true", help="the store alone only")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="bench-checkpoint-", dir=args.dir)

    def fresh(name: str) -> str:
        return tempfile.mkdtemp(prefix=name, dir=base)
    try:
        kinds: Dict[str, Dict[str, object]] = {"store alone": {}}
        if "fsync" in getattr(store_module.Checkpoint, "__dataclass_fields__", {}):
            kinds["store alone, fsync=True"] = {"fsync": True}
        for label, options in kinds.items():
            rounds = [store_alone(fresh("alone"), args.items, **options)
                      for _ in range(args.rounds)]
            med = median_of(rounds)
            print(f"{label:<26} put {med['put']:7.1f} us/item   get {med['get']:6.1f} us/item")
        if not args.no_map:
            with poolguard.Pool(2) as pool:
                rounds = [pool_map(pool, fresh("map"), args.items) for _ in range(args.rounds)]
            med = median_of(rounds)
            print(f"map of {args.items} x+1 (2 workers): no store {med['none'] * 1e3:.1f} ms, "
                  f"first {med['first'] * 1e3:.1f} ms, stored {med['stored'] * 1e3:.1f} ms")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
