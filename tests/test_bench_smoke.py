"""The benchmarks of `bench/` still run: each in its `--quick` mode, through run_all.py.

Targets are not checked here (they are judged by reading BENCHMARKS.md); only that
every benchmark measures, prints its target table, and that run_all.py writes the
results between its markers and keeps the hand-written text around them.
Benchmark 1 (cassini_roundtrip.py) is skipped: it has no quick mode and times process
starts for about 20 s.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {
    "2": "## 2. Daemon throughput",
    "3": "## 3. Scale",
    "4": "## 4. Punctuality",
    "5": "## 5. Idle cost",
    "6": "## 6. History",
    "7": "## 7. Memory of a minute's runs",
}


def test_it_runs_every_benchmark_in_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(
        "# kept above\n\n"
        "<!-- RESULTS: written by bench/run_all.py; edit outside these markers -->\n"
        "old results\n"
        "<!-- END OF RESULTS -->\n\n"
        "## kept below\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run_all.py"),
            "--quick",
            "--skip",
            "1",
            "--idle-seconds",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# kept above\n")
    assert text.rstrip().endswith("## kept below")
    assert "old results" not in text
    for heading in OURS.values():
        assert heading in text
    assert "not measured" not in text
    summary = text.split("### Summary of the targets", 1)[1].split("\n## ", 1)[0]
    verdicts = [
        line for line in summary.splitlines() if line.startswith("| ") and "|---" not in line
    ]
    # Two target rows each for 2, 4, 5 and 6, four for 3, one for 7, after the header row.
    assert len(verdicts) == 1 + 2 + 4 + 2 + 2 + 2 + 1, summary
