"""`iipa bench`: each stage's throughput against a baseline measured in the same run.

Every benchmark is a module of `cluster.benches` with `run(config: BenchConfig) -> dict` that
returns at least {"stage", "unit", "value", "baseline", "baseline_value", "ratio"}: the ratio is
what to compare across machines, since both numbers share the machine's load at that moment.
A module may also define `plot(result, path)` to draw a figure of its own beside the summary.
`iipa bench` with no stage runs them all and writes one JSON and one PNG summary.
"""
from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shards.console import Parser, UserError, check_out, run_main

# stage → module under cluster.benches; each is imported only when run.
BENCHES = {
    "ingest-parse": "parse",
    "ingest": "ingest",
    "ingest-x": "ingest_x",
    "pairs": "pairs",
    "loader": "loader",
    "train": "train",
    "score": "score",
    "scale": "scale",
}


SIZES = ("quick", "suite", "full")


@dataclass
class BenchConfig:
    """Options shared by every benchmark."""

    workdir: Path
    """Scratch folder for generated inputs (kept between runs so inputs are built once)."""
    size: str = "full"
    """quick: tiny inputs, a smoke run of the code, no measurement; suite: reduced inputs, so that
    `iipa bench` runs every stage in under 10 minutes on a 2-core machine; full: each stage's own
    figure (10 M photos for pairs, 1 M tweets for ingest-parse, 2 000 photos for ingest, …)."""

    @property
    def quick(self) -> bool:
        return self.size == "quick"

    def pick(self, quick, suite, full):
        """The value of a size-dependent setting for this run's size."""
        return {"quick": quick, "suite": suite, "full": full}[self.size]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(target: str, **kwargs) -> dict:
    """Call `module:function(**kwargs)` in a fresh Python process; return its result (a dict)
    with `seconds` and `peak_rss_mb` of that process, so two methods' memory can be compared."""
    module, function = target.split(":")
    code = (f"import json, sys, time, resource; from {module} import {function} as f; "
            "kw = json.loads(sys.argv[1]); t = time.perf_counter(); r = f(**kw) or {}; "
            "r['seconds'] = time.perf_counter() - t; "
            "r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs, default=str)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{target} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def write_summary(results: list[dict], path: Path) -> None:
    """BENCH.json and BENCH.png: per stage the throughput, its baseline and their ratio; and
    BENCH-STAGE.png for each stage whose module draws a figure of its own (`plot(result, path)`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.6 * len(results)))
    labels = [f"{r['stage']}\n{r['value']:.3g} {r['unit'].split(' (')[0]}" for r in results]
    ratios = [r["ratio"] for r in results]
    ax.barh(labels, ratios, color=["tab:blue" if x >= 1 else "tab:red" for x in ratios])
    for y, r in enumerate(results):
        ax.text(r["ratio"], y, f" {r['ratio']:.3g}× vs {r['baseline'][:40]}", va="center", fontsize=8)
    ax.axvline(1.0, color="grey", linestyle="--")
    ax.set_xscale("log")  # ratios span from below 1 to hundreds
    ax.set_xlim(min(ratios + [1]) / 2, max(ratios + [1]) * 30)
    ax.set_xlabel("speed-up over the baseline measured in the same run (×, log scale)")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=100)
    plt.close(fig)
    for result in results:
        module = importlib.import_module(f"cluster.benches.{BENCHES[result['stage']]}")
        if hasattr(module, "plot"):
            module.plot(result, path.with_name(f"{path.stem}-{result['stage']}.png"))


def main(argv=None, prog: str = "iipa bench") -> int:
    p = Parser(prog=prog, description="Throughput of each stage against a baseline measured in the same run "
                                      "(no stage: all of them), as JSON and a PNG summary.")
    p.add_argument("stages", nargs="*", help=f"stages to run: {', '.join(BENCHES)} (default: all)")
    p.add_argument("--json", type=Path, help="write the results here (and a PNG beside it)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "iipa-bench",
                   help="scratch folder for generated inputs")
    p.add_argument("--quick", action="store_true", help="tiny inputs: check the benchmarks run, measure nothing")
    p.add_argument("--size", choices=SIZES, help="input size (default: suite when running every stage, else full)")
    args = p.parse_args(argv)

    def handler(args) -> int:
        unknown = [s for s in args.stages if s not in BENCHES]
        if unknown:
            raise UserError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
        check_out(args.workdir, "--workdir")
        if args.json:
            check_out(args.json, "--json", folder=False)
        size = args.size or ("quick" if args.quick else "full" if args.stages else "suite")
        results = []
        for stage in args.stages or list(BENCHES):
            module = importlib.import_module(f"cluster.benches.{BENCHES[stage]}")
            start = time.perf_counter()
            result = module.run(BenchConfig(args.workdir / stage / size, size))
            result.update(size=size, bench_seconds=round(time.perf_counter() - start, 1))
            results.append(result)
            print(json.dumps(result), flush=True)
        if args.json:
            write_summary(results, args.json)
        return 0

    return run_main(handler, args, prog)
