"""Run every benchmark of `bench/` and write their tables into `BENCHMARKS.md`.

Each benchmark is a script run with this interpreter in its own process; its standard
output (Markdown) goes into BENCHMARKS.md between the two RESULTS markers, under a
summary of every target row. Everything outside the markers (the analysis of missed
targets, written by people) is kept as it is. Benchmark 1 (`cassini_roundtrip.py`)
times real process starts for some 20 s and has no quick mode of its own; it is run
when present, and reported missing otherwise.

Exit status: 0 when every benchmark measured; 1 when one could not (or is missing).
A missed target never changes the exit status: targets are judged by reading.

Usage:
    python bench/run_all.py                    # everything, idle for 10 minutes
    python bench/run_all.py --idle-seconds 60  # a shorter idle measurement
    python bench/run_all.py --quick --out /tmp/b.md   # seconds, small sizes (CI smoke)
    python bench/run_all.py --only 2,3         # some of them (by number)
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN = "<!-- RESULTS: written by bench/run_all.py; edit outside these markers -->"
END = "<!-- END OF RESULTS -->"

TEMPLATE = f"""# Benchmarks

`python bench/run_all.py` runs every benchmark of `bench/` and rewrites the results
below; each benchmark is also a script of its own (`--help`). Ratios come from the two
sides measured interleaved in the same run; absolute figures hold for the machine
described above each table.

{BEGIN}
{END}

## Missed targets: what limits them and what would close them

(Written by hand after a run; run_all.py keeps this section.)
"""


@dataclass(frozen=True)
class Bench:
    number: str
    script: str
    title: str


BENCHES = (
    Bench("1", "cassini_roundtrip.py", "cassini round trip"),
    Bench("2", "bench_throughput.py", "daemon throughput"),
    Bench("3", "bench_scale.py", "scale"),
    Bench("4", "bench_punctuality.py", "punctuality"),
    Bench("5", "bench_idle.py", "idle cost"),
    Bench("6", "bench_history.py", "history"),
    Bench("7", "bench_run_memory.py", "memory of a minute's runs"),
)


@dataclass
class Outcome:
    bench: Bench
    status: int
    stdout: str
    stderr: str
    seconds: float


def arguments_for(bench: Bench, args: argparse.Namespace) -> list[str]:
    """Command-line arguments for one benchmark under this run's options."""
    extra: list[str] = []
    script = HERE / bench.script
    if args.quick:
        if bench.number == "1":
            # It has no quick mode: pass --quick only if it says it understands it.
            helped = subprocess.run(
                [sys.executable, str(script), "--help"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if "--quick" in helped.stdout:
                extra.append("--quick")
        else:
            extra.append("--quick")
    if bench.number == "5" and args.idle_seconds is not None:
        extra += ["--seconds", str(args.idle_seconds)]
    return extra


def run_one(bench: Bench, args: argparse.Namespace) -> Outcome:
    script = HERE / bench.script
    if not script.exists():
        return Outcome(bench, -1, "", f"bench/{bench.script} is missing", 0.0)
    command = [sys.executable, str(script), *arguments_for(bench, args)]
    print(f"run_all: {' '.join(command[1:])} ...", file=sys.stderr, flush=True)
    began = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    seconds = time.monotonic() - began
    print(
        f"run_all: bench/{bench.script} exited {done.returncode} after {seconds:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return Outcome(bench, done.returncode, done.stdout, done.stderr, seconds)


def target_rows(output: str) -> list[list[str]]:
    """The rows of the `| target | measured | goal | verdict |` tables of an output."""
    rows: list[list[str]] = []
    inside = False
    for line in output.splitlines():
        if line.startswith("| target | measured | goal | verdict |"):
            inside = True
            continue
        if inside and line.startswith("|---"):
            continue
        if inside and line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        inside = False
    return rows


def results_section(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    options = " ".join(sys.argv[1:]) or "(no options)"
    parts = [
        f"Latest run: {stamp}, `python bench/run_all.py {options}`"
        + (" (QUICK MODE: smoke-test sizes, not the real figures)" if args.quick else "")
        + ".",
        "",
        "### Summary of the targets",
        "",
        "| benchmark | target | measured | goal | verdict |",
        "|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        label = f"{outcome.bench.number}. {outcome.bench.title}"
        rows = target_rows(outcome.stdout) if outcome.status == 0 else []
        if not rows and outcome.status == 0:
            parts.append(f"| {label} | see its own table below | | | |")
        elif not rows:
            why = outcome.stderr.strip().splitlines()[-1:] or ["no output"]
            parts.append(f"| {label} | not measured: {why[0]} | | | |")
        for row in rows:
            parts.append(f"| {label} | " + " | ".join(row) + " |")
    for outcome in outcomes:
        parts.append("")
        if outcome.status == -1:
            parts += [
                f"## {outcome.bench.number}. {outcome.bench.title}",
                "",
                f"Not measured: `bench/{outcome.bench.script}` is missing.",
            ]
            continue
        text = outcome.stdout.strip()
        if not text.startswith("## "):
            text = f"## {outcome.bench.number}. {outcome.bench.title}\n\n```\n{text}\n```"
        parts.append(text)
        parts.append("")
        parts.append(f"_(bench/{outcome.bench.script}: {outcome.seconds:.0f} s)_")
        if outcome.status != 0:
            tail = "\n".join(outcome.stderr.strip().splitlines()[-15:])
            parts += [
                "",
                f"**Could not measure** (exit status {outcome.status}):",
                "",
                "```",
                tail,
                "```",
            ]
    return "\n".join(parts)


def write(out: Path, section: str) -> None:
    """Replace what lies between the markers; keep everything else."""
    text = out.read_text(encoding="utf-8") if out.exists() else TEMPLATE
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    out.write_text(f"{head}{BEGIN}\n{section}\n{END}{tail}", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and short, for CI")
    parser.add_argument(
        "--idle-seconds", type=float, default=None, help="idle benchmark duration (600)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--only", default=None, help="comma-separated benchmark numbers")
    parser.add_argument("--skip", default="", help="comma-separated benchmark numbers")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else {b.number for b in BENCHES}
    wanted -= set(filter(None, args.skip.split(",")))
    outcomes = [run_one(bench, args) for bench in BENCHES if bench.number in wanted]
    write(args.out, results_section(outcomes, args))
    print(f"run_all: wrote {args.out}", file=sys.stderr)
    failed = [o.bench.script for o in outcomes if o.status != 0]
    if failed:
        print(f"run_all: could not measure: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
