"""The Hugging Face export's dataset card and its upload: `datasets` and `huggingface_hub` read
the card as the Hub does, the license is derived from the family the items record, and
`--push-to-hub` builds one commit of the card, the metadata and the videos (offline: only the
network call is replaced)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_export_support import DONE_IDS, build_root, frames, item_dict

from pusa_batch.cli.main import main
from pusa_batch.errors import ExportError
from pusa_batch.outputs.common import HF_SCHEMA
from pusa_batch.outputs.hf import (
    CARD_MARK,
    export_hf,
    hf_features,
    hub_upload,
    local_export_folder,
    pusa_batch_version,
    push_to_hub,
)
from pusa_batch.store.store import Store
from pusa_batch.video import encode_mp4

datasets = pytest.importorskip("datasets")
huggingface_hub = pytest.importorskip("huggingface_hub")

RUN = {"state": "finished", "manifest": "manifests/prompts.csv", "pipeline": "pipelines/x.toml"}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No Hub here: every test runs as if offline, with its own caches."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def commit_generated(store: Store, item_id: str, family: str, name: str, **fields) -> None:
    """A done item as a real worker records it: the pipeline's name, family and identity."""
    item = item_dict(item_id, fields.pop("prompt", "a lake"), fields.pop("seed", 1), **fields)
    video = encode_mp4(frames(item["seed"], item["num_frames"], item["height"]), item["fps"])
    pipeline = {"name": name, "family": family, "identity": f"id-{family}"}
    meta = {"item": item, "fingerprint": f"fp-{item_id}", "pipeline": pipeline, "frames": 9}
    store.commit(item_id, video, meta)


def wan_root(folder: Path) -> Store:
    store = Store(str(folder / "out"))
    commit_generated(store, "lake-0", "wan2.1", "pusa-v1-wan2.1-t2v-14b", seed=0)
    commit_generated(store, "lake-1", "wan2.1", "pusa-v1-wan2.1-t2v-14b", seed=1)
    store.write_run_info(RUN)
    return store


def card_of(folder: Path):
    return huggingface_hub.DatasetCard.load(folder / "README.md")


def load(path: Path, cache: Path):
    return datasets.load_dataset(str(path), split="train", cache_dir=str(cache))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """build_root's run (done, failed, orphan and truncated items) exported to a folder."""
    folder = tmp_path_factory.mktemp("hf")
    store = build_root(folder)
    store.write_run_info(RUN)
    export_hf(store, folder / "dest")
    return folder / "dest"


# ------------------------------------------------------------------------------ the card


def test_the_card_is_a_dataset_card_the_hub_library_parses(exported):
    data = card_of(exported).data
    assert isinstance(data, huggingface_hub.DatasetCardData)
    assert data.pretty_name == "tiny videos (pusa-batch)"
    assert data.task_categories == ["text-to-video", "image-to-video"]  # one item has an image
    assert data.size_categories == ["n<1K"]
    assert {"synthetic", "pusa"} <= set(data.tags)
    assert data.license == "other"  # build_root's markers record no model family


def test_the_cards_config_names_the_metadata_and_the_videos(exported):
    configs = datasets.utils.metadata.MetadataConfigs.from_dataset_card_data(card_of(exported).data)
    assert configs == {
        "default": {
            "data_files": [{"split": "train", "path": ["metadata.parquet", "videos/*.mp4"]}]
        }
    }


def test_the_cards_features_are_the_video_then_every_metadata_column(exported):
    infos = datasets.info.DatasetInfosDict.from_dataset_card_data(card_of(exported).data)
    features = infos["default"].features
    assert list(features) == ["video", *(n for n in HF_SCHEMA.names if n != "file_name")]
    assert isinstance(features["video"], datasets.Video)
    assert features["cond_pixel_frames"] == datasets.List(datasets.List(datasets.Value("int64")))


def test_load_dataset_on_the_folder_reads_the_cards_config(exported, tmp_path):
    loaded = load(exported, tmp_path / "cache")
    assert sorted(loaded["id"]) == sorted(DONE_IDS)
    assert isinstance(loaded.features["video"], datasets.Video)
    rows = loaded.cast_column("video", datasets.Video(decode=False))
    for row in rows:
        assert Path(row["video"]["path"]) == exported / "videos" / f"{row['id']}.mp4"


def test_the_cards_pyav_example_decodes_a_video(exported):
    card = (exported / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", card, re.S) if "import av" in b]
    assert f'load_dataset("{exported}"' in snippet
    scope: dict = {}
    exec(snippet, scope)  # the card's own example, as a reader would paste it
    assert len(scope["frames"]) == 9 and scope["frames"][0].shape == (32, 32, 3)


def test_export_into_the_root_lets_load_dataset_read_only_the_done_videos(tmp_path):
    store = build_root(tmp_path)  # markers, failures, an orphan and a truncated video lie there
    summary = export_hf(store)
    assert summary.files == ("metadata.parquet", "README.md")
    loaded = load(tmp_path / "out", tmp_path / "cache")
    assert sorted(loaded["id"]) == sorted(DONE_IDS)


# ------------------------------------------------------------------------------ what it says


def test_the_license_comes_from_the_family_the_items_record(tmp_path):
    export_hf(wan_root(tmp_path), tmp_path / "dest")
    card = card_of(tmp_path / "dest")
    assert card.data.license == "apache-2.0"
    assert "derived by pusa-batch from the model family each item records" in card.text
    assert "Wan2.1 (Wan-AI/Wan2.1-T2V-14B-Diffusers) is Apache-2.0" in card.text


def test_two_families_each_say_where_their_license_comes_from(tmp_path):
    store = wan_root(tmp_path)
    commit_generated(store, "fog", "mochi", "pusa-v0.5-mochi")
    export_hf(store, tmp_path / "dest")
    card = card_of(tmp_path / "dest")
    assert card.data.license == "apache-2.0"
    assert "Wan2.1 (Wan-AI" in card.text and "Mochi 1 preview (genmo/mochi-1-preview)" in card.text
    assert "pusa-v0.5-mochi (family mochi, identity id-mochi): 1" in card.text


def test_items_without_a_family_get_license_other_and_the_card_says_why(exported):
    card = card_of(exported)
    assert card.data.license == "other"
    assert "the items record no model family, so no license could be derived" in card.text


def test_the_card_names_the_run_command_versions_and_counts(tmp_path):
    store = wan_root(tmp_path)
    export_hf(store, tmp_path / "dest")
    text = card_of(tmp_path / "dest").text
    command = f"pusa-batch run manifests/prompts.csv -o {store.url} --pipeline pipelines/x.toml"
    assert f"`{command}`" in text
    assert f"with pusa-batch {pusa_batch_version()}" in text and pusa_batch_version() != "unknown"
    assert "pusa-v1-wan2.1-t2v-14b (family wan2.1, identity id-wan2.1): 2" in text
    assert "| tasks | t2v 2 |" in text and "32x32, 9 frames at 8 fps: 2" in text


def test_the_card_counts_the_done_items_it_left_out(exported):
    assert "5 video(s)" in card_of(exported).text
    assert "1 done item(s) left out (video missing or shorter than recorded)" in (
        card_of(exported).text
    )


def test_a_root_without_run_json_says_the_command_was_not_recorded(tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_generated(store, "lake", "wan2.1", "p")
    export_hf(store, tmp_path / "dest")
    assert "not recorded (no run.json in the root)" in card_of(tmp_path / "dest").text


def test_the_card_says_what_decodes_on_a_cpu_torch(exported):
    text = card_of(exported).text
    assert 'pip install "torchcodec==0.13.*"' in text and "Video(decode=False)" in text


def test_features_of_nested_lists_use_the_hub_list_form():
    by_name = {f["name"]: f for f in hf_features()}
    assert by_name["video"] == {"name": "video", "dtype": "video"}
    assert by_name["cond_pixel_frames"] == {"name": "cond_pixel_frames", "list": {"list": "int64"}}
    assert by_name["input_images"] == {"name": "input_images", "list": "string"}
    assert "file_name" not in by_name


# ------------------------------------------------------------------------------ README.md


def test_a_readme_pusa_batch_did_not_write_stops_the_export_before_it_writes(tmp_path):
    store = wan_root(tmp_path)
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "README.md").write_text("# my notes\n")
    with pytest.raises(ExportError, match="README.md exists and was not written by pusa-batch"):
        export_hf(store, tmp_path / "dest")
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["README.md"]


def test_a_readme_in_the_root_is_never_overwritten(tmp_path):
    store = wan_root(tmp_path)
    (tmp_path / "out" / "README.md").write_text("# about this run\n")
    with pytest.raises(ExportError, match="move it away"):
        export_hf(store)
    assert (tmp_path / "out" / "README.md").read_text() == "# about this run\n"
    assert not (tmp_path / "out" / "metadata.parquet").exists()


def test_a_reexport_rewrites_its_own_card(tmp_path):
    store = wan_root(tmp_path)
    export_hf(store, tmp_path / "dest")
    commit_generated(store, "lake-2", "wan2.1", "pusa-v1-wan2.1-t2v-14b", seed=2)
    export_hf(store, tmp_path / "dest")
    text = (tmp_path / "dest" / "README.md").read_text()
    assert text.count(CARD_MARK) == 1 and "3 synthetic videos" in text


# ------------------------------------------------------------------------------ the Hub


def test_the_upload_plan_holds_the_card_the_metadata_and_every_video(exported):
    plan = hub_upload(exported, "someone/pusa-videos")
    videos = sorted(f"videos/{i}.mp4" for i in DONE_IDS)
    assert plan.paths_in_repo[:2] == ("README.md", "metadata.parquet")
    assert sorted(plan.paths_in_repo[2:]) == videos
    assert (plan.repo_id, plan.repo_type) == ("someone/pusa-videos", "dataset")
    version = pusa_batch_version()
    assert plan.commit_message == f"pusa-batch {version} export: 5 video(s), card and metadata"
    for op in plan.operations:
        assert op.path_or_fileobj == str(exported / op.path_in_repo)


def test_the_upload_plan_of_a_root_leaves_the_runs_own_files_out(tmp_path):
    store = build_root(tmp_path)
    export_hf(store)
    plan = hub_upload(local_export_folder(store, None), "someone/pusa-videos")
    assert sorted(plan.paths_in_repo[2:]) == sorted(f"videos/{i}.mp4" for i in DONE_IDS)
    assert not [p for p in plan.paths_in_repo if p.startswith(("items/", "failures/", "run"))]


def test_the_upload_plan_needs_an_hf_export(tmp_path):
    with pytest.raises(ExportError, match="has no metadata.parquet"):
        hub_upload(tmp_path, "someone/pusa-videos")


@pytest.mark.parametrize("repo_id", ["no-owner", "bad name/x", "a/b/c"])
def test_the_upload_plan_refuses_a_repo_id_the_hub_would(exported, repo_id):
    with pytest.raises(ExportError, match="--push-to-hub"):
        hub_upload(exported, repo_id)


def test_pushing_from_an_object_store_root_is_refused_before_exporting():
    store = Store("memory://hf-push-root")
    with pytest.raises(ExportError, match="uploads a local folder"):
        local_export_folder(store, None)


class FakeHub:
    """Stands in for the two network calls of `HfApi`; records what they were given."""

    def __init__(self, monkeypatch, fail: Exception | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail = fail
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", self.create_commit)

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))
        if self.fail:
            raise self.fail

    def create_commit(self, *args, **kwargs):
        self.calls.append(("create_commit", args, kwargs))
        url = f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/abc"
        return huggingface_hub.CommitInfo(url, "msg", "", "abc")


def test_push_creates_a_private_dataset_repo_if_missing_then_commits_the_plan(
    exported, monkeypatch
):
    hub = FakeHub(monkeypatch)
    plan = hub_upload(exported, "someone/pusa-videos")
    url = push_to_hub(plan)
    (_, repo_args, repo_kwargs), (_, _, commit) = hub.calls
    assert repo_args == ("someone/pusa-videos",)
    assert repo_kwargs == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert commit["repo_type"] == "dataset" and commit["commit_message"] == plan.commit_message
    assert [op.path_in_repo for op in commit["operations"]] == list(plan.paths_in_repo)
    assert url == "https://huggingface.co/datasets/someone/pusa-videos/commit/abc"


def test_a_failed_push_is_an_export_error_naming_the_login(exported, monkeypatch):
    FakeHub(monkeypatch, fail=ConnectionError("no route to huggingface.co"))
    with pytest.raises(ExportError, match="hf auth login") as caught:
        push_to_hub(hub_upload(exported, "someone/pusa-videos"))
    assert "no route to huggingface.co" in str(caught.value)


def test_cli_export_push_to_hub_pushes_the_export_it_wrote(tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    wan_root(tmp_path)
    argv = ["export", str(tmp_path / "out"), "-f", "hf", "-o", str(tmp_path / "dest")]
    assert main([*argv, "--push-to-hub", "someone/pusa-videos"]) == 0
    (_, _, commit) = hub.calls[1]
    assert sorted(op.path_in_repo for op in commit["operations"]) == [
        "README.md",
        "metadata.parquet",
        "videos/lake-0.mp4",
        "videos/lake-1.mp4",
    ]
    assert 'load_dataset("someone/pusa-videos"' in (tmp_path / "dest" / "README.md").read_text()
    printed = " ".join(capsys.readouterr().out.split())
    assert "pushed 4 file(s) to the Hub dataset someone/pusa-videos:" in printed


def test_cli_push_to_hub_is_for_the_hf_format_only(tmp_path):
    wan_root(tmp_path)
    argv = ["export", str(tmp_path / "out"), "-f", "vbench", "-o", str(tmp_path / "d")]
    assert main([*argv, "--push-to-hub", "someone/pusa-videos"]) == 2


def test_cli_push_to_hub_refuses_a_bad_repo_id_before_exporting(tmp_path):
    wan_root(tmp_path)
    argv = ["export", str(tmp_path / "out"), "-f", "hf", "-o", str(tmp_path / "d")]
    assert main([*argv, "--push-to-hub", "no-owner"]) == 2
    assert not (tmp_path / "d" / "metadata.parquet").exists()
