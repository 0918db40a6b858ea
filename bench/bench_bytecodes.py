"""
Python bytecodes executed per proxied request, by function: where the
interpreter's own work goes (CPython).

Instruction counts under callgrind (C{bench_http_core.py --instructions})
count everything alike, but an instruction of the bytecode loop costs more
time than one of C{memcpy} or the regex engine: the loop's indirect branches
and scattered data give it a lower IPC.  Two trees can run the same number
of instructions per request and differ by several percent in CPU time when
one of them does more of its work in bytecode.  This script counts that
work exactly: it runs L{bench_http_core}'s keep-alive case (fake
transports, no sockets) with C{sys.settrace} opcode events on and prints
bytecodes per request, in total and by function.  Deterministic; tracing
makes it slow (run it with small C{-n}).

    python bench/bench_bytecodes.py --mode reverse            # this checkout
    python bench/bench_bytecodes.py --mode reverse --json out.json
    python bench/bench_bytecodes.py --diff old.json new.json  # by function name

Run it in each checkout (its own C{bench_http_core.py} is imported), with
C{TXPROXY_PURE=1} in a compiled install: compiled modules run no bytecode.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any, Dict, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))


def count(mode: str, n: int) -> Tuple[float, Dict[str, float]]:
    """
    Bytecodes per request of C{n} keep-alive requests (after two warm-up
    rounds), total and by C{file:function}.
    """
    sys.path.insert(0, HERE)
    import bench_http_core  # noqa: E402 (this checkout's)

    case = bench_http_core.Case(mode, "none", n)
    case.loop()
    case.loop()
    counts: collections.Counter = collections.Counter()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        return tracer

    sys.settrace(tracer)
    try:
        case.loop()
    finally:
        sys.settrace(None)
    perRequest = {name: value / n for name, value in counts.items()}
    return sum(perRequest.values()), perRequest


def byName(functions: Dict[str, float]) -> Dict[str, float]:
    """
    Sum by function name, so that a function that moved to another module
    still compares with itself.
    """
    out: Dict[str, float] = collections.defaultdict(float)
    for key, value in functions.items():
        out[key.rpartition(":")[2]] += value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("forward", "reverse"), default="reverse")
    ap.add_argument("-n", type=int, default=200, help="requests counted (default 200)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", help="also write the counts to this file")
    ap.add_argument("--diff", nargs=2, metavar=("OLD", "NEW"), help="compare two --json files")
    args = ap.parse_args()
    if args.diff:
        old, new = (json.load(open(path)) for path in args.diff)
        a, b = byName(old["functions"]), byName(new["functions"])
        print(f"bytecodes per request: {old['total']:.0f} -> {new['total']:.0f} "
              f"({new['total'] / old['total'] - 1:+.1%})")
        names = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0) - a.get(k, 0)))
        for name in names[: args.top]:
            print(f"{b.get(name, 0) - a.get(name, 0):+8.1f}  {name}  ({a.get(name, 0):.0f} -> {b.get(name, 0):.0f})")
        return
    total, functions = count(args.mode, args.n)
    print(f"# {args.mode}: {total:.0f} bytecodes per request ({sys.implementation.name} {sys.version.split()[0]})")
    for name, value in sorted(functions.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{value:8.1f}  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": args.mode, "total": total, "functions": functions}, f, indent=1)


if __name__ == "__main__":
    main()
