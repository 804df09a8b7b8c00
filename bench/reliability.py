"""Benchmark: the fault-injection suite of tests/reliability/ in its long form, as a table.

Runs `pytest tests/reliability` with SATURND_RELIABILITY=long (200 kills, 1,000 client
exchanges, a 1 GiB flood, 10,000 runs, every byte offset of the torn records, DST nights
from start to end...) and prints, in Markdown, the machine, the date, and one row per
scenario test: iterations, what was checked, result and worst latency; then the focused
cases of each scenario (the tests written for what the suite found) with their results.

Usage:
    python bench/reliability.py            # the long form (about 10 minutes here)
    python bench/reliability.py --short    # the form CI runs (under 5 minutes)
    python bench/reliability.py -k crash   # some scenarios (pytest's -k)

Exit status: 0 when every test passed, 1 when one failed or the suite could not run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """One line on where the figures come from."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
        memory_text = f"{memory} GiB RAM"
    except (OSError, ValueError, IndexError):
        memory_text = "RAM unknown"
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({model}), {memory_text}, "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.2f} at start"
    )


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the CI form, not the long one")
    parser.add_argument("-k", dest="select", help="only the tests pytest -k selects")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="saturnd-reliability-") as scratch:
        report = Path(scratch) / "report.jsonl"
        env = dict(os.environ, SATURND_RELIABILITY_REPORT=str(report))
        if args.short:
            env.pop("SATURND_RELIABILITY", None)
        else:
            env["SATURND_RELIABILITY"] = "long"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "tests/reliability",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={scratch}/tmp",
        ]
        if args.select:
            command += ["-k", args.select]
        started = time.monotonic()
        when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        where = machine()
        run = subprocess.run(command, cwd=ROOT, env=env, stdout=sys.stderr, check=False)
        took = time.monotonic() - started
        rows = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if report.exists()
            else []
        )

    if not rows:
        print("bench/reliability.py: the suite reported nothing", file=sys.stderr)
        return 1
    form = "short (CI)" if args.short else "long"
    print(f"Fault-injection suite, {form} form: {when}, {took / 60:.1f} minutes.")
    print()
    print(f"Machine: {where}.")
    print()
    print("| scenario | iterations | what was checked | result | worst latency |")
    print("| --- | ---: | --- | --- | ---: |")
    focused: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (str(r["scenario"]), str(r["test"]))):
        if not row["checked"]:
            focused[str(row["scenario"])].append(row)
            continue
        print(
            f"| {cell(str(row['scenario']))} | {row['iterations']} | {cell(str(row['checked']))}"
            f" | {row['result']} | {latency(row['worst_latency'])} |"
        )
    for scenario, cases in sorted(focused.items()):
        passed = sum(1 for case in cases if case["result"] == "pass")
        names = ", ".join(
            str(case["test"]).split("::")[-1].removeprefix("test_it_").replace("_", " ")
            for case in cases
        )
        print(
            f"| {cell(scenario)} | {len(cases)} | focused cases: {cell(names)} "
            f"| {'pass' if passed == len(cases) else f'FAIL ({len(cases) - passed})'} | - |"
        )
    failed = [row for row in rows if row["result"] != "pass"]
    print()
    print(f"{len(rows)} tests, {len(failed)} failed; pytest exit status {run.returncode}.")
    return 0 if run.returncode == 0 and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
