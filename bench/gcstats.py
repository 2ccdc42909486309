"""What Python's cyclic garbage collector costs the running proxy.

Runs `signing-proxy ARGS...` in this process with `gc.callbacks` timing every collection, and
writes the totals per generation as one JSON line to `--out` when the proxy exits (SIGINT or
SIGTERM). `--python-defaults` keeps Python's own settings (no `gc.freeze()`, threshold 700)
instead of what `run` sets once it serves, for an A/B on the same load:

    .venv/bin/python bench/gcstats.py --out /tmp/gc.json -- run --config F --drain-delay 0
    wrk -t1 -c50 -d10s http://127.0.0.1:PORT/...; kill -INT <pid>

Not a test and not part of `run.py`: a measuring aid whose figures are recorded in README.md.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import proxy.server
from proxy.cli import main as proxy_main


class Collections:
    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self.count[generation] += 1
        self.seconds[generation] += took
        self.longest[generation] = max(self.longest[generation], took)

    def report(self) -> dict[str, Any]:
        return {
            "generations": [
                {
                    "generation": generation,
                    "collections": self.count[generation],
                    "total_ms": round(self.seconds[generation] * 1000, 1),
                    "longest_ms": round(self.longest[generation] * 1000, 2),
                }
                for generation in range(3)
            ],
            "threshold": gc.get_threshold(),
            "frozen_objects": gc.get_freeze_count(),
            "tracked_objects": len(gc.get_objects()),
            "process_cpu_s": round(time.process_time(), 2),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON line written at exit")
    parser.add_argument(
        "--python-defaults",
        action="store_true",
        help="leave the collector as Python sets it (no freeze, threshold 700)",
    )
    parser.add_argument("proxy_args", nargs=argparse.REMAINDER, help="-- then signing-proxy's")
    args = parser.parse_args()
    proxy_args = args.proxy_args[1:] if args.proxy_args[:1] == ["--"] else args.proxy_args
    collections = Collections()
    gc.callbacks.append(collections)
    if args.python_defaults:
        proxy.server.settle_garbage_collector = lambda: None  # cli imports it at call time
    atexit.register(lambda: args.out.write_text(json.dumps(collections.report()) + "\n"))
    return proxy_main(proxy_args)


if __name__ == "__main__":
    sys.exit(main())
