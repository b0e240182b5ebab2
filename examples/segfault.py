"""A C-level crash in a task: the error carries the Python stack at the crash,
as faulthandler wrote it in the worker."""
import ctypes

import poolguard


def parse_record(record):
    if record == "corrupt":
        return decode_with_c_library(record)
    return record.upper()


def decode_with_c_library(record):
    return ctypes.string_at(0)       # stands for a bug in a C extension


if __name__ == "__main__":
    with poolguard.Pool(2) as pool:
        try:
            pool.map(parse_record, ["a", "b", "corrupt", "d"], chunksize=1)
        except poolguard.WorkerCrashedError as exc:
            print(exc)
            print(f"\noom={exc.oom} verdict={exc.oom_verdict}")
