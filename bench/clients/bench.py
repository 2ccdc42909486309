"""Micro-benchmark: N small GETs at concurrency 1 and 50, requests/s and CPU s per request.

Run (all libraries, one run, each in its own process; the upstream must be running):
  .venv/bin/python bench/clients/bench.py --libs aiohttp,rnet,pyreqwest --n 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from adapters import FACTORIES, Adapter, Settings, read_all

HEADERS = [
    ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/s3/aws4_request"),
    ("X-Amz-Date", "20260101T000000Z"),
    ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
    ("X-Request-Id", "0123456789abcdef"),
]


async def run(lib: Adapter, url: str, n: int, concurrency: int) -> dict[str, float]:
    async def worker(count: int) -> None:
        for _ in range(count):
            async with lib.stream("GET", url, HEADERS) as reply:
                await read_all(reply)
                assert reply.status == 200

    await asyncio.gather(*(worker(200 // concurrency or 1) for _ in range(concurrency)))  # warm
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = n // concurrency * concurrency
    return {"rps": done / wall, "cpu_us": cpu / done * 1e6, "wall": wall}


async def one(name: str, url: str, n: int, levels: list[int]) -> dict[str, object]:
    lib = FACTORIES[name](Settings())
    try:
        return {str(c): await asyncio.wait_for(run(lib, url, n, c), 600) for c in levels}
    finally:
        await lib.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--libs", default="aiohttp,rnet,pyreqwest")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--levels", default="1,50")
    parser.add_argument("--url", default="http://127.0.0.1:18080/small")
    parser.add_argument("--child", help="internal: run one library in this process")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if args.child:
        import uvloop

        result = uvloop.run(one(args.child, args.url, args.n, levels))
        print(json.dumps({"lib": args.child, "loop": "uvloop", **result}))
        return
    results = {}
    for name in args.libs.split(","):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                name,
                "--n",
                str(args.n),
                "--levels",
                args.levels,
                "--url",
                args.url,
            ],
            capture_output=True,
            text=True,
            timeout=1500,
            check=False,
        )
        if out.returncode != 0:
            print(f"{name}: exit {out.returncode}: {out.stderr[-500:]}", file=sys.stderr)
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results.get("aiohttp")
    print("| library | conc | req/s | CPU us/req | req/s vs aiohttp | CPU/req vs aiohttp |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, res in results.items():
        for c in levels:
            r = res[str(c)]
            b = base[str(c)] if base else r
            print(
                f"| {name} | {c} | {r['rps']:.0f} | {r['cpu_us']:.0f} | "
                f"{r['rps'] / b['rps']:.2f}x | {r['cpu_us'] / b['cpu_us']:.2f}x |"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
