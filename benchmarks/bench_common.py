"""What every benchmark script shares: its result line, its verdict, and the injected slowdown.

A result line is `B<n> name=value [name=value ...] target<op><x> pass|miss`, which
`benchmarks/run_all` collects. `--inject-slowdown S` (or PUSA_BENCH_SLOWDOWN=S) makes the measured
side of a benchmark worse by S (seconds added per measured item or call; for B3, which measures
memory, S x 100 MiB held during our forward), so that a test and a reader can see each verdict
turn to `miss`: a figure that cannot fail checks nothing.
"""

from __future__ import annotations

import argparse
import operator
import os
import resource
import sys
from dataclasses import dataclass

SLOWDOWN_ENV = "PUSA_BENCH_SLOWDOWN"
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    op: str  # one of OPERATORS
    bound: float

    def met_by(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"target{self.op}{self.bound:g}"


def verdict(value: float, target: Target) -> str:
    return "pass" if target.met_by(value) else "miss"


def result_line(bench_id: str, name: str, value: float, target: Target, digits: int = 3) -> str:
    """`B1 e2e_ratio=0.912 target>=0.8 pass`, the line `run_all` parses."""
    return f"{bench_id} {name}={value:.{digits}f} {target} {verdict(value, target)}"


def add_slowdown_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--inject-slowdown",
        type=float,
        default=None,
        metavar="S",
        help=f"make the measured side worse on purpose: {what} (default: ${SLOWDOWN_ENV} or 0); "
        "the verdict must then read miss",
    )


def slowdown(args: argparse.Namespace, environ=os.environ) -> float:
    """The injected slowdown: `--inject-slowdown`, else $PUSA_BENCH_SLOWDOWN, else 0."""
    if args.inject_slowdown is not None:
        return max(0.0, args.inject_slowdown)
    return max(0.0, float(environ.get(SLOWDOWN_ENV) or 0.0))


def rss_bytes() -> int:
    """This process's resident memory now (Linux's /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM, which, unlike ru_maxrss, a child started by
    exec does not inherit from its parent."""
    with open("/proc/self/status") as status:
        for text in status:
            if text.startswith("VmHWM:"):
                return int(text.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def python_as_run_starts(script: str) -> list[str]:
    """The argv start of a fresh Python that runs `script` as `__main__` after the call `run`'s
    process makes first (one malloc arena, Arrow on malloc): a child measuring `run`'s work."""
    code = (
        "import os, runpy, sys; from pusa_batch.engine.heap import keep_one_heap; keep_one_heap(); "
        "sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(sys.argv[0])); "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    return [sys.executable, "-c", code, script]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
