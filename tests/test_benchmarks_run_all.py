"""`benchmarks/run_all` as a user meets it: the table, the exit status, budgets, flags.

Each test writes small stand-in benchmark scripts under the real file names into a folder and
points `--bench-dir` at it, so the runner's own behaviour is checked in a second or two.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

RUN_ALL = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all"
NAMES = {
    "B1": "b1_throughput.py",
    "B2": "b2_vs_diffusers.py",
    "B3": "b3_modulation_memory.py",
    "B4": "b4_resume_plan.py",
    "B5": "b5_validate_1m.py",
    "B6": "b6_overlap.py",
    "B7": "b7_batching.py",
}


def write_bench(folder: Path, bench: str, body: str) -> None:
    (folder / NAMES[bench]).write_text("import sys, time, os\n" + body)


def run_all(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(RUN_ALL),
            "--bench-dir",
            str(folder),
            "--log-dir",
            str(folder / "logs"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def table_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| B"):
            rows.setdefault(cells[0], []).append(cells)
    return rows


def test_a_run_where_every_result_passes_exits_zero(tmp_path):
    write_bench(tmp_path, "B1", 'print("details"); print("B1 e2e_ratio=0.97 target>=0.8 pass")')
    write_bench(tmp_path, "B3", 'print("B3 peak_memory_ratio=0.31 target<=0.5 pass")')
    done = run_all(tmp_path, "--only", "B1", "B3")
    rows = table_rows(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rows["B1"][0][1:4] == ["e2e_ratio=0.97", ">=0.8", "pass"]
    assert rows["B3"][0][1:4] == ["peak_memory_ratio=0.31", "<=0.5", "pass"]


def test_a_miss_fails_the_run_and_is_named(tmp_path):
    write_bench(tmp_path, "B1", 'print("B1 e2e_ratio=0.97 target>=0.8 pass")')
    write_bench(tmp_path, "B3", 'print("B3 peak_memory_ratio=0.61 target<=0.5 miss")')
    done = run_all(tmp_path, "--only", "B1", "B3")
    assert done.returncode == 1
    assert table_rows(done.stdout)["B3"][0][1:4] == ["peak_memory_ratio=0.61", "<=0.5", "miss"]
    assert "- failed: B3 " in done.stdout


def test_a_missing_script_fails_the_run(tmp_path):
    write_bench(tmp_path, "B1", 'print("B1 e2e_ratio=0.97 target>=0.8 pass")')
    done = run_all(tmp_path, "--only", "B1", "B2")
    assert done.returncode == 1
    assert table_rows(done.stdout)["B2"][0][3] == "missing"


def test_the_lines_of_every_id_a_script_prints_get_rows_under_their_own_id(tmp_path):
    # B1's script also prints B8 (start-up) and B9 (vs Ray Data); --only B8 runs it
    write_bench(
        tmp_path,
        "B1",
        'print("B1 e2e_ratio=0.91 target>=0.8 pass")\n'
        'print("B8 first_item_extra_s=7.20 target<=5 miss")\n'
        'print("B9 e2e_ratio_vs_ray_data=1.10 target>=1 pass")\n'
        'print("B5 validate_1m_seconds=1.0 target<=10 pass")',  # not this script's id
    )
    done = run_all(tmp_path, "--only", "B8")
    rows = table_rows(done.stdout)
    assert set(rows) == {"B1", "B8", "B9"}
    assert rows["B8"][0][1:4] == ["first_item_extra_s=7.20", "<=5", "miss"]
    assert done.returncode == 1


def test_an_injected_slowdown_reaches_every_script(tmp_path):
    for bench in ("B5", "B7"):
        write_bench(
            tmp_path,
            bench,
            f'print("{bench} slowdown=" + os.environ.get("PUSA_BENCH_SLOWDOWN", "none") '
            '+ " target<=0 miss")',
        )
    rows = table_rows(run_all(tmp_path, "--only", "B5", "B7", "--inject-slowdown", "2").stdout)
    assert rows["B5"][0][1] == rows["B7"][0][1] == "slowdown=2.0"


def test_every_result_line_of_a_script_gets_a_row(tmp_path):
    write_bench(
        tmp_path,
        "B4",
        'print("B4 resume_plan_local_seconds=0.4 target<=3 pass")\n'
        'print("B4 resume_plan_s3_seconds=7.5 target<=3 miss")',
    )
    done = run_all(tmp_path, "--only", "B4")
    assert [r[3] for r in table_rows(done.stdout)["B4"]] == ["pass", "miss"]


def test_a_result_line_may_carry_several_figures(tmp_path):
    write_bench(tmp_path, "B6", 'print("B6 serial_busy=0.86 overlap_busy=0.99 target>=0.95 pass")')
    row = table_rows(run_all(tmp_path, "--only", "B6").stdout)["B6"][0]
    assert row[1:4] == ["serial_busy=0.86 overlap_busy=0.99", ">=0.95", "pass"]


def test_a_crash_fails_the_run_and_shows_the_last_error_line(tmp_path):
    write_bench(tmp_path, "B5", 'sys.exit("cannot write the manifest: disk full")')
    done = run_all(tmp_path, "--only", "B5")
    row = table_rows(done.stdout)["B5"][0]
    assert done.returncode == 1
    assert row[3] == "crashed"
    assert "disk full" in row[1]


def test_a_script_without_a_result_line_fails_the_run(tmp_path):
    write_bench(tmp_path, "B5", 'print("B5 validate took a while")')
    done = run_all(tmp_path, "--only", "B5")
    assert done.returncode == 1
    assert table_rows(done.stdout)["B5"][0][3] == "no result line"


def test_a_script_over_budget_is_stopped_with_what_it_started(tmp_path):
    # B5's budget is 50 s; scaled by 0.04 it is 2 s. The script starts a child that would
    # outlive it, then sleeps past the budget: both must be gone when run_all returns.
    write_bench(
        tmp_path,
        "B5",
        "import subprocess\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(tmp_path / 'pids')!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n",
    )
    start = time.monotonic()
    done = run_all(tmp_path, "--only", "B5", "--budget-scale", "0.04")
    assert time.monotonic() - start < 30
    assert done.returncode == 1
    assert table_rows(done.stdout)["B5"][0][3] == "timeout"
    for pid in map(int, (tmp_path / "pids").read_text().split()):
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), f"pid {pid} still runs"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"


def test_flags_go_only_to_scripts_whose_help_lists_them(tmp_path):
    # run_all passes B2 `--repeats 15 --large-repeats 5`; this B2 offers only --repeats, and B6
    # is given no flags at all.
    echo_args = (
        "import argparse\n"
        "p = argparse.ArgumentParser()\n"
        "{arg}"
        "p.parse_args()\n"
        "print('B{n} args=' + ','.join(sys.argv[1:] or ['none']) + ' target<=1 pass')\n"
    )
    write_bench(tmp_path, "B2", echo_args.format(arg="p.add_argument('--repeats')\n", n=2))
    write_bench(tmp_path, "B6", echo_args.format(arg="", n=6))
    rows = table_rows(run_all(tmp_path, "--only", "B2", "B6").stdout)
    assert rows["B2"][0][1] == "args=--repeats,15"
    assert rows["B6"][0][1] == "args=none"


def test_the_report_names_machine_load_date_and_command(tmp_path):
    write_bench(tmp_path, "B1", 'print("B1 e2e_ratio=0.97 target>=0.8 pass")')
    lines = run_all(tmp_path, "--only", "B1").stdout.splitlines()
    machine = next(line for line in lines if line.startswith("- machine:"))
    load = next(line for line in lines if line.startswith("- load average"))
    assert re.search(r"\d+ cores, [\d.]+ GiB RAM", machine)
    assert len(re.findall(r"\d+\.\d\d", load)) == 6  # 1/5/15 min, at start and at end
    assert any(re.match(r"- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC", line) for line in lines)
    command = next(line for line in lines if line.startswith("- command: benchmarks/run_all "))
    assert command.endswith("--only B1")
