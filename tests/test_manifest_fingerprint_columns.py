"""chunk_fingerprints: the plan's column-wise fingerprints are item_fingerprint's, byte for byte,
whatever the text, the numbers, the defaults and the tasks of the rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pusa_batch.manifest.read import (
    chunk_fingerprints,
    item_fingerprint,
    iter_checked_chunks,
    iter_chosen_items,
    iter_items,
    plain_t2v_template,
)
from pusa_batch.pipelines.spec import load_pipeline_spec

TINY = load_pipeline_spec(Path(__file__).resolve().parents[1] / "pipelines" / "tiny.toml")
PROMPTS = [
    "a red cat",
    'a "quoted" word and a back\\slash',
    "caf\u00e9 au lait, \u732b, and an emoji \U0001f431",
    "a tab\there and a line\nbreak",
    "a bell \x07 and a delete \x7f",
    "  padded  ",
    "{not json} [either]",
]


@pytest.fixture(autouse=True)
def column_wise_path_taken(caplog):
    """Every test here fails if the column-wise texts ever differed and fell back to items."""
    caplog.set_level(logging.WARNING, logger="pusa_batch.manifest.fingerprint")
    yield
    assert [r.getMessage() for r in caplog.records] == []


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def per_item(manifest: str, spec=TINY) -> list[str]:
    identity = spec.identity()
    return [
        item_fingerprint(item, identity, temporal_factor=spec.temporal_factor)
        for item in iter_items(manifest, spec)
    ]


def column_wise(manifest: str, spec=TINY, chunk_rows: int = 3) -> list[str]:
    identity = spec.identity()
    template = plain_t2v_template(identity)
    found = []
    for chunk in iter_checked_chunks(manifest, spec, chunk_rows=chunk_rows):
        rows = np.arange(chunk.n)
        found += chunk_fingerprints(
            chunk, rows, identity, temporal_factor=spec.temporal_factor, template=template
        )
    return found


def test_plain_t2v_rows_match_item_fingerprint_for_any_prompt_text(tmp_path):
    rows = [{"id": f"p{n}", "task": "t2v", "prompt": p} for n, p in enumerate(PROMPTS)]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    assert column_wise(manifest) == per_item(manifest)


def test_given_numbers_and_defaults_match_item_fingerprint(tmp_path):
    rows = [
        {"id": "a", "task": "t2v", "prompt": "x", "seed": 4294967295, "steps": 7},
        {"id": "b", "task": "t2v", "prompt": "x", "guidance_scale": 7.5, "shift": 1e-05},
        {"id": "c", "task": "t2v", "prompt": "x", "guidance_scale": 12.345678901234567},
        {"id": "d", "task": "t2v", "prompt": "x", "num_frames": 9, "height": 32, "width": 48},
        {"id": "e", "task": "t2v", "prompt": "x", "fps": 24, "negative_prompt": "dark"},
        {"id": "f", "task": "t2v", "prompt": "x"},
    ]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    assert column_wise(manifest) == per_item(manifest)


def test_a_csv_manifest_matches_too(tmp_path):
    (tmp_path / "m.csv").write_text(
        "id,task,prompt,negative_prompt,seed,guidance_scale\n"
        'a,t2v,"a, comma",,1,\n'
        'b,t2v,"a ""quote""",grey,2,4\n'
        "c,T2V,  caps and spaces  ,,3,1.25\n"
    )
    manifest = str(tmp_path / "m.csv")
    assert column_wise(manifest) == per_item(manifest)


def test_rows_with_inputs_or_other_tasks_are_fingerprinted_one_by_one_the_same(tmp_path):
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "a.png")
    rows = [
        {"id": "t", "task": "t2v", "prompt": "plain"},
        {"id": "i", "task": "i2v", "prompt": "from an image", "image": "a.png"},
        {"id": "u", "task": "t2v", "prompt": "plain again", "seed": 9},
    ]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    assert column_wise(manifest) == per_item(manifest)


def test_any_subset_of_rows_gets_the_same_fingerprints(tmp_path):
    rows = [{"id": f"p{n}", "task": "t2v", "prompt": p, "seed": n} for n, p in enumerate(PROMPTS)]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    expected = per_item(manifest)
    [chunk] = iter_checked_chunks(manifest, TINY, chunk_rows=100)
    identity = TINY.identity()
    picked = np.array([5, 1, 3])
    found = chunk_fingerprints(
        chunk,
        picked,
        identity,
        temporal_factor=TINY.temporal_factor,
        template=plain_t2v_template(identity),
    )
    assert found == [expected[i] for i in picked]


@pytest.mark.parametrize("chunk_rows", [1, 2, 100])
def test_chosen_rows_are_read_as_the_same_items_with_their_row_numbers(tmp_path, chunk_rows):
    rows = [{"id": f"p{n}", "task": "t2v", "prompt": f"scene {n}"} for n in range(7)]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    every = list(iter_items(manifest, TINY))
    wanted = [1, 4, 6]
    chosen: dict[int, np.ndarray] = {}
    for row in wanted:
        chosen.setdefault(row // chunk_rows, []).append(row % chunk_rows)
    chosen = {k: np.array(v) for k, v in chosen.items()}
    items = list(iter_chosen_items(manifest, TINY, chosen, chunk_rows=chunk_rows))
    assert items == [every[i] for i in wanted]


def test_a_manifest_changed_since_the_plan_is_an_error_naming_the_row(tmp_path):
    from pusa_batch.errors import ManifestError

    rows = [{"id": f"p{n}", "task": "t2v", "prompt": f"scene {n}"} for n in range(4)]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    rows[2]["task"] = "dance"
    write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(ManifestError, match="changed while the run planned it: row 3"):
        list(iter_chosen_items(manifest, TINY, {0: np.array([2])}, chunk_rows=10))


def test_a_column_the_template_does_not_know_sends_the_chunk_one_item_at_a_time(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(
        "pusa_batch.manifest.fingerprint.TEMPLATE_COLUMNS",
        frozenset({"id", "id (as text)", "task", "prompt"}),
    )
    rows = [{"id": f"p{n}", "task": "t2v", "prompt": p, "seed": n} for n, p in enumerate(PROMPTS)]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    assert column_wise(manifest) == per_item(manifest)


def test_plain_t2v_rows_with_every_number_given_are_hashed_column_wise(tmp_path, monkeypatch):
    import pusa_batch.manifest.fingerprint as fingerprints

    one_by_one = []
    real = fingerprints.item_fingerprint

    def counted(item, *args, **kwargs):
        one_by_one.append(item.id)
        return real(item, *args, **kwargs)

    rows = [
        {"id": f"p{n}", "task": "t2v", "prompt": "x", "seed": n, "steps": 3, "num_frames": 9}
        | {"height": 32, "width": 32, "fps": 16, "guidance_scale": 4.5, "shift": 3.0}
        for n in range(40)
    ]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    expected = per_item(manifest)
    monkeypatch.setattr(fingerprints, "item_fingerprint", counted)
    assert column_wise(manifest, chunk_rows=20) == expected
    assert one_by_one == ["p0", "p20"]  # only the spot check of each chunk
