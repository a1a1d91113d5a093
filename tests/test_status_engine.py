"""`pusa-batch status` on the output of a real tiny engine run (embedded Ray, 2 items), through
the library and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pusa_batch.cli.main import main
from pusa_batch.engine.config import RunConfig
from pusa_batch.engine.run import run
from pusa_batch.engine.status import read_status
from pusa_batch.pipelines.spec import load_pipeline_spec

TINY = Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml"
HEADER = "id,task,prompt,num_frames,height,width,steps,seed"
CAT = "cat,t2v,a red cat,5,32,32,2,1"
DOG = "dog,t2v,a blue dog,5,32,32,2,2"


def write_manifest(path: Path, *rows: str) -> Path:
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("status_run")
    manifest = write_manifest(folder / "manifest.csv", CAT, DOG)
    output = folder / "out"
    config = RunConfig(manifest=str(manifest), output=str(output), pipeline=str(TINY), workers=1)
    summary = run(config)
    assert summary.generated == 2
    return folder, manifest, output


def test_a_finished_run_has_every_item_done_and_none_pending(finished):
    _, manifest, output = finished
    report = read_status(str(output), manifest=str(manifest), spec=load_pipeline_spec(TINY))
    counts = report["counts"]
    assert (counts["done"], counts["failed"], counts["pending"], counts["changed"]) == (2, 0, 0, 0)
    assert report["state"] == "finished"
    assert report["run"]["generated"] == 2
    assert [w["id"] for w in report["workers"]] == ["w0"]
    assert report["workers"][0]["done"] == 2 and report["workers"][0]["load_s"] > 0


def test_cli_json_output_parses(finished, capsys):
    _, manifest, output = finished
    code = main(["status", str(output), "--manifest", str(manifest), "-p", str(TINY), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["counts"]["done"] == 2 and report["counts"]["pending"] == 0


def test_cli_text_shows_a_changed_item_after_its_prompt_is_edited(finished, capsys):
    folder, _, output = finished
    edited = write_manifest(folder / "edited.csv", "cat,t2v,a red cat at dawn,5,32,32,2,1", DOG)
    code = main(["status", str(output), "--manifest", str(edited), "-p", str(TINY)])
    text = capsys.readouterr().out
    assert code == 0
    assert "1 done, 0 failed, 0 pending, 1 changed" in text
    assert "Changed: cat" in text


def test_cli_a_new_item_in_the_manifest_is_pending(finished, capsys):
    folder, _, output = finished
    grown = write_manifest(folder / "grown.csv", CAT, DOG, "sun,t2v,a sunrise,5,32,32,2,3")
    main(["status", str(output), "--manifest", str(grown), "-p", str(TINY), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (report["counts"]["pending"], report["counts"]["changed"]) == (1, 0)
