"""Where the user's own manifest columns end up: the marker, the index parts, `index.parquet`,
the Hugging Face export and the CLI's summary; and the builders' near misses (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_export_support import frames

from pusa_batch.cli.main import main
from pusa_batch.manifest.read import iter_items
from pusa_batch.outputs.hf import export_hf
from pusa_batch.outputs.webdataset import export_webdataset
from pusa_batch.store.store import Store
from pusa_batch.video import encode_mp4

VIDEO = encode_mp4(frames(0), 8)


def commit_rows(store: Store, folder: Path, name: str, header: str, rows: list[str]) -> None:
    """Commit each row's item as a worker records it: the item's dict under `item`."""
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    for item in iter_items(str(path)):
        store.commit(item.id, VIDEO, {"item": item.to_dict(), "fingerprint": f"fp-{item.id}"})


def final_index(store: Store, folder: Path) -> list[dict]:
    store.compact_index()
    store.write_final_index()
    return pq.read_table(folder / "out" / "index.parquet").to_pylist()


def test_the_marker_holds_the_items_extra(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_rows(store, tmp_path, "m.csv", "id,task,prompt,category", ["a,t2v,x,animals"])
    marker = json.loads((tmp_path / "out" / "items" / "a.json").read_text())
    assert marker["item"]["extra"] == {"category": "animals"}


def test_the_final_index_has_one_extra_struct_per_item(tmp_path):
    store = Store(str(tmp_path / "out"))
    header = "id,task,prompt,category,source"
    commit_rows(store, tmp_path, "m.csv", header, ["a,t2v,x,animals,web", "b,t2v,y,,cam"])
    rows = final_index(store, tmp_path)
    assert [(r["id"], r["extra"]) for r in rows] == [
        ("a", {"category": "animals", "source": "web"}),
        ("b", {"category": None, "source": "cam"}),
    ]


def test_parts_of_manifests_with_other_extra_columns_merge_into_one_struct(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_rows(store, tmp_path, "one.csv", "id,task,prompt,category", ["a,t2v,x,animals"])
    store.compact_index()
    commit_rows(store, tmp_path, "two.csv", "id,task,prompt,source", ["b,t2v,y,cam"])
    store.compact_index()
    commit_rows(store, tmp_path, "three.csv", "id,task,prompt", ["c,t2v,z"])
    rows = final_index(store, tmp_path)
    assert [r["extra"] for r in rows] == [
        {"category": "animals", "source": None},
        {"category": None, "source": "cam"},
        None,
    ]


def test_a_root_without_extra_columns_has_no_extra_in_its_index(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_rows(store, tmp_path, "m.csv", "id,task,prompt", ["a,t2v,x"])
    assert "extra" not in final_index(store, tmp_path)[0]


def test_markers_written_before_extra_are_exported_beside_new_ones(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_rows(store, tmp_path, "old.csv", "id,task,prompt", ["a,t2v,x"])
    commit_rows(store, tmp_path, "new.csv", "id,task,prompt,category", ["b,t2v,y,animals"])
    summary = export_hf(store, tmp_path / "hf")
    table = pq.read_table(tmp_path / "hf" / "metadata.parquet")
    assert summary.exported == 2
    assert table.column("extra").to_pylist() == [None, {"category": "animals"}]


def test_the_hf_card_declares_the_extra_struct_for_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    store = Store(str(tmp_path / "out"))
    commit_rows(store, tmp_path, "m.csv", "id,task,prompt,category", ["a,t2v,x,animals"])
    export_hf(store, tmp_path / "hf")
    card = huggingface_hub.DatasetCard.load(tmp_path / "hf" / "README.md")
    infos = datasets.info.DatasetInfosDict.from_dataset_card_data(card.data)
    assert infos["default"].features["extra"] == {"category": datasets.Value("string")}


def test_webdataset_samples_carry_the_extra_in_their_json(tmp_path):
    wds = pytest.importorskip("webdataset")
    store = Store(str(tmp_path / "out"))
    commit_rows(store, tmp_path, "old.csv", "id,task,prompt", ["a,t2v,x"])
    commit_rows(store, tmp_path, "new.csv", "id,task,prompt,category", ["b,t2v,y,animals"])
    summary = export_webdataset(store, tmp_path / "wds")
    urls = [str(tmp_path / "wds" / name) for name in summary.files]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    records = {s["__key__"]: json.loads(s["json"]) for s in samples}
    assert records["b"]["extra"] == {"category": "animals"}
    assert "extra" not in records["a"]


# ------------------------------------------------------------------------ the CLI


def test_validate_names_the_extra_columns_once(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text("task,prompt,category,source\nt2v,x,animals,web\n")
    assert main(["validate", str(path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("carried as extra metadata: category, source") == 1


def test_validate_strict_columns_is_exit_2_naming_each_column(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text("task,prompt,category,source\nt2v,x,animals,web\n")
    assert main(["validate", str(path), "--strict-columns"]) == 2
    printed = capsys.readouterr().err
    assert "column 'category'" in printed and "column 'source'" in printed


def test_sweep_refuses_a_near_miss_grid_key_before_writing(tmp_path, capsys):
    base, out = tmp_path / "base.csv", tmp_path / "s.csv"
    base.write_text("id,task,prompt\na,t2v,x\n")
    assert main(["manifest", "sweep", str(base), "--grid", "sed=0..4", "-o", str(out)]) == 2
    assert "did you mean 'seed'" in capsys.readouterr().err
    assert not out.exists()


def test_sweep_over_ones_own_column_carries_it_as_extra(tmp_path):
    base, out = tmp_path / "base.csv", tmp_path / "s.csv"
    base.write_text("id,task,prompt\na,t2v,x\n")
    assert main(["manifest", "sweep", str(base), "--grid", "style=warm,cold", "-o", str(out)]) == 0
    assert [dict(i.extra) for i in iter_items(str(out))] == [{"style": "warm"}, {"style": "cold"}]
