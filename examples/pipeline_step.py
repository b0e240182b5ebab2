"""A pipeline step that survives a worker death and says which input caused it.

Each item is submitted on its own; a crash fails that item alone, the step
finishes the rest and reports the failures for a rerun.
"""
import ctypes

import poolguard


def resize(image_id):
    if image_id == 5:        # a corrupt input makes a C library crash
        ctypes.string_at(0)
    return f"image-{image_id}-small"


def run_step(name, func, items, workers=2):
    done, failed = {}, {}
    with poolguard.Pool(workers) as pool:
        pending = {item: pool.apply_async(func, (item,)) for item in items}
        for item, result in pending.items():
            try:
                done[item] = result.get(timeout=60)
            except Exception as exc:   # WorkerCrashedError, or the task's own error
                failed[item] = exc
    print(f"step {name!r}: {len(done)} done, {len(failed)} failed")
    for item, exc in failed.items():
        print(f"  {func.__name__}({item}) -> {type(exc).__name__}: {exc}")
    return done, failed


if __name__ == "__main__":
    run_step("resize", resize, range(8))
