"""CLI habits users bring from `hf` and `ray`: -h, completion, a dry run without Ray, --json,
-q / -v, RAY_ADDRESS, and errors (not silence) for roots that do not exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pusa_batch.cli.main import main
from pusa_batch.manifest.read import item_fingerprint, iter_items
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.store.store import Store

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "manifests" / "demo.csv"
TINY = ROOT / "pipelines" / "tiny.toml"
DEMO_IDS = ["cat-surfing", "city-timelapse", "forest-drone", "ball-rolls", "clouds-drift"]


def commit_done(out: Path, ids: set[str]) -> Store:
    """Commit the demo items named in `ids` with their real fingerprints (no model runs)."""
    spec = load_pipeline_spec(TINY)
    store = Store(str(out))
    for item in iter_items(str(DEMO), spec):
        if item.id in ids:
            fingerprint = item_fingerprint(item, spec.identity(), temporal_factor=4)
            store.commit(item.id, b"\x00mp4", {"fingerprint": fingerprint})
    return store


def run_args(out: Path, *extra: str) -> list[str]:
    return ["run", str(DEMO), "-o", str(out), "--pipeline", str(TINY), *extra]


@pytest.mark.parametrize("argv", [["-h"], ["run", "-h"], ["manifest", "-h"], ["status", "-h"]])
def test_dash_h_is_help(argv, capsys):
    assert main(argv) == 0
    assert "Usage:" in capsys.readouterr().out


def test_shell_completion_is_offered(capsys):
    assert main(["--help"]) == 0
    assert "--install-completion" in capsys.readouterr().out


def test_completion_script_names_the_program():
    shown = subprocess.run(
        [sys.executable, "-m", "pusa_batch", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1", "PATH": "/usr/bin:/bin"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "complete" in shown.stdout


def test_dry_run_counts_and_names_the_first_pending_items(tmp_path, capsys):
    commit_done(tmp_path / "out", {"cat-surfing"})
    assert main(run_args(tmp_path / "out", "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "6 item(s)" in text and "done 1, pending 5" in text
    assert "would generate 5: city-timelapse, forest-drone" in text
    assert "Nothing was started or written." in text


def test_dry_run_writes_nothing_and_starts_no_ray(tmp_path):
    out = tmp_path / "fresh"
    code = (
        "import sys; from pusa_batch.cli.main import main; "
        f"rc = main({run_args(out, '--dry-run')!r}); "
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules, 'imported'; "
        "sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not out.exists()


def test_dry_run_json_lists_counts_and_ids(tmp_path, capsys):
    assert main(run_args(tmp_path / "out", "--dry-run", "--json")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["total"], plan["todo"], plan["done"]) == (6, 6, 0)
    assert plan["todo_ids"][:5] == DEMO_IDS


def test_dry_run_warns_that_changed_items_would_stop_the_run(tmp_path, capsys):
    store = Store(str(tmp_path / "out"))
    store.commit("cat-surfing", b"\x00mp4", {"fingerprint": "not-this-one"})
    assert main(run_args(tmp_path / "out", "--dry-run")) == 0
    assert "the run would stop: 1 done item(s) changed (cat-surfing)" in capsys.readouterr().out


def test_run_json_prints_the_summary_as_json(tmp_path, capsys):
    commit_done(tmp_path / "out", {*DEMO_IDS, "sun-sets"})  # nothing to do: no Ray needed
    assert main(run_args(tmp_path / "out", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["total"], summary["done_before"], summary["generated"]) == (6, 6, 0)
    assert summary["exit_code"] == 0 and summary["failures"] == []


def test_quiet_run_prints_one_summary_line(tmp_path, capsys):
    commit_done(tmp_path / "out", {*DEMO_IDS, "sun-sets"})
    assert main(run_args(tmp_path / "out", "-q")) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [captured.out.splitlines()[0]]
    assert captured.out.startswith("6 items: 0 generated, 6 already done")
    assert captured.err == ""


def test_quiet_and_verbose_together_are_a_usage_error(tmp_path, capsys):
    assert main(run_args(tmp_path / "out", "-q", "-v")) == 2
    assert "not both" in capsys.readouterr().err


def test_a_dashboard_url_in_ray_address_is_refused_with_the_addresses_that_work(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert main(run_args(tmp_path / "out")) == 2
    text = capsys.readouterr().err
    assert "RAY_ADDRESS=http://head:8265 is a Ray dashboard address" in text
    assert "HOST:6379" in text and not (tmp_path / "out").exists()


def test_ray_address_names_the_cluster_run_joins(monkeypatch):
    from pusa_batch.engine.run import ray_address

    assert ray_address(None, {"RAY_ADDRESS": "10.0.0.1:6379"}) == "10.0.0.1:6379"
    assert ray_address("auto", {"RAY_ADDRESS": "10.0.0.1:6379"}) == "auto"
    assert ray_address(None, {}) is None


def test_status_of_a_root_that_does_not_exist_exits_2_and_creates_nothing(tmp_path, capsys):
    assert main(["status", str(tmp_path / "typo")]) == 2
    assert "no output root at" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_json_log_format_writes_one_event_per_line_on_stderr(tmp_path, capsys):
    commit_done(tmp_path / "out", {*DEMO_IDS, "sun-sets"})
    assert main(run_args(tmp_path / "out", "--log-format", "json", "--json")) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.err.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "phase" and "started" in kinds and kinds[-1] == "finished"
    started = events[kinds.index("started")]
    assert (started["total"], started["done_before"], started["pending"]) == (6, 6, 0)
    assert events[-1]["summary"]["exit_code"] == 0 and all("ts" in e for e in events)
    assert json.loads(captured.out)["total"] == 6  # stdout keeps only the result


def test_choices_are_shown_and_checked(capsys):
    assert main(["make-tiny-model", "-h"]) == 0
    assert "wan2.1|wan2.2|mochi" in capsys.readouterr().out
    assert main(["make-tiny-model", "/nonexistent/x", "--kind", "wan3"]) == 2
    assert "'wan3' is not one of" in capsys.readouterr().err


def test_export_names_its_destination_dest_and_old_o_still_works_with_a_notice(tmp_path, capsys):
    from test_export_support import build_root

    store = build_root(tmp_path)
    args = ["export", store.url, "--format", "webdataset"]
    assert main([*args, "-o", str(tmp_path / "shards")]) == 0
    captured = capsys.readouterr()
    assert "note: -o/--output is deprecated here; use --dest" in captured.err
    assert main([*args, "--dest", str(tmp_path / "again")]) == 0
    assert "deprecated" not in capsys.readouterr().err


def test_export_json_prints_its_summary(tmp_path, capsys):
    from test_export_support import DONE_IDS, build_root

    store = build_root(tmp_path)
    code = main(["export", store.url, "-f", "webdataset", "--dest", str(tmp_path / "w"), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "webdataset" and summary["exported"] == len(DONE_IDS)


def test_export_format_is_a_choice_and_a_missing_root_is_an_error(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "mp4zip", "--dest", "x"]) == 2
    assert "'mp4zip' is not one of" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "typo"), "-f", "hf"]) == 2
    assert "no output root at" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_doctor_json_lists_every_check(capsys):
    assert main(["doctor", "--pipeline", str(TINY), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["checks"]
    assert {"name", "status", "detail"} <= set(report["checks"][0])


def test_builder_tasks_are_choices(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\n")
    args = ["manifest", "from-prompts", str(prompts), "-o", str(tmp_path / "m.csv")]
    assert main([*args, "--task", "dance"]) == 2
    assert "'dance' is not one of" in capsys.readouterr().err
    assert main([*args, "--task", "t2v"]) == 0


def test_weights_storage_options_reach_the_spec_the_workers_load(tmp_path):
    from pusa_batch.engine.runner import PipelineRunner, run_spec

    toml = tmp_path / "remote.toml"
    toml.write_text('family = "wan2.1"\n[weights]\nroot = "s3://models/wan/"\n')
    spec = run_spec(str(toml), {"s3:anon": True})
    assert spec.staging.storage_options["s3"] == {"anon": True}
    assert PipelineRunner(str(toml), {"s3:anon": True}).weights_storage_options == {"s3:anon": True}
    assert "anon" not in repr(spec)
