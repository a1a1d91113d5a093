"""VBench's own reader over our export: `VBench.build_full_info_json` of the real `vbench`
package (``pip install --no-deps vbench==0.1.5``) finds 5 of 5 videos per prompt, on tmpfs
(which lists the newest file first) and on disk, in its standard and custom_input modes.

Only `vbench`'s video decoders (decord, torchvision), which `vbench.utils` imports at the top
and `build_full_info_json` never calls, are stood in for when they are not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import types
from pathlib import Path

import pytest
from test_export_support import commit_item, item_dict

from pusa_batch.outputs.vbench import export_vbench
from pusa_batch.store.store import Store

DIMENSION = "subject_consistency"  # custom_input mode accepts it (it needs no extra info)


def _absent(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:  # its parent package is absent
        return True


def _decoder_stand_ins() -> dict[str, types.ModuleType]:
    """The names `vbench.utils` imports from decord and torchvision, for those not installed."""
    stand_ins = {}
    if _absent("decord"):
        decord = types.ModuleType("decord")
        decord.VideoReader, decord.cpu = object, (lambda *a, **k: None)
        stand_ins["decord"] = decord
    if _absent("torchvision"):
        vision, transforms = types.ModuleType("torchvision"), types.ModuleType("transforms")
        for name in "Compose Resize CenterCrop ToTensor Normalize ToPILImage Lambda".split():
            setattr(transforms, name, object)
        vision.transforms = transforms
        stand_ins |= {"torchvision": vision, "torchvision.transforms": transforms}
    return stand_ins


@pytest.fixture(scope="module")
def vbench():
    """The real `vbench` package, or a skip saying how to install it."""
    if _absent("vbench"):
        pytest.skip("vbench is not installed: pip install --no-deps vbench==0.1.5")
    stand_ins = {n: m for n, m in _decoder_stand_ins().items() if n not in sys.modules}
    sys.modules.update(stand_ins)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # vbench.utils calls basicConfig(INFO)
    try:
        module = importlib.import_module("vbench")
    except ImportError as exc:
        pytest.skip(f"vbench cannot be imported ({exc})")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
        root.handlers[:], root.level = handlers, level
    return module


@pytest.fixture(scope="module")
def full_info(vbench) -> str:
    """The VBench_full_info.json that the package ships (VBench's standard prompt suite)."""
    return str(Path(vbench.__file__).parent / "VBench_full_info.json")


@pytest.fixture(scope="module")
def suite_prompts(full_info) -> list[str]:
    """Two prompts VBench scores for `DIMENSION`, as its suite spells them."""
    entries = json.loads(Path(full_info).read_text())
    return [e["prompt_en"] for e in entries if DIMENSION in e["dimension"]][:2]


@pytest.fixture(scope="module")
def store(suite_prompts, tmp_path_factory) -> Store:
    """A run of those prompts, seeds 0-4 each (one small video shared by all)."""
    store = Store(str(tmp_path_factory.mktemp("vbench-run") / "out"))
    video = None
    for number, prompt in enumerate(suite_prompts):
        for seed in range(5):
            video = commit_item(store, item_dict(f"p{number}-s{seed}", prompt, seed), video)
    return store


def _tmpfs() -> Path | None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        return None
    with open("/proc/mounts", encoding="utf-8") as mounts:
        kinds = {line.split()[1]: line.split()[2] for line in mounts if len(line.split()) > 2}
    return shm if kinds.get(str(shm)) == "tmpfs" else None


@pytest.fixture(params=["tmpfs", "disk"])
def dest(request, tmp_path):
    """An empty export destination on tmpfs (/dev/shm) or on disk (pytest's tmp_path)."""
    if request.param == "disk":
        yield tmp_path / "vbench"
        return
    shm = _tmpfs()
    if shm is None:
        pytest.skip("no writable tmpfs at /dev/shm")
    folder = shm / f"pusa-vbench-{os.getpid()}-{tmp_path.name}"
    yield folder
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()


def found_by_vbench(vbench, full_info, videos_path, tmp_path, **kwargs) -> dict[str, list[str]]:
    """{prompt: the videos VBench's build_full_info_json lists for it}."""
    reader = vbench.VBench("cpu", full_info, str(tmp_path / "vbench-results"))
    info = reader.build_full_info_json(str(videos_path), "pusa", [DIMENSION], **kwargs)
    found: dict[str, list[str]] = {}
    for entry in json.loads(Path(info).read_text()):
        found.setdefault(entry["prompt_en"], []).extend(entry["video_list"])
    return found


def test_standard_mode_finds_five_of_five_per_prompt(
    vbench, full_info, suite_prompts, store, dest, tmp_path
):
    export_vbench(store, dest)
    found = found_by_vbench(vbench, full_info, dest / "videos", tmp_path)
    for prompt in suite_prompts:
        assert sorted(Path(p).name for p in found[prompt]) == [
            f"{prompt}-{i}.mp4" for i in range(5)
        ]
        assert all(Path(p).is_file() for p in found[prompt])


def test_standard_mode_finds_them_in_the_per_dimension_layout(
    vbench, full_info, suite_prompts, store, dest, tmp_path
):
    prompts_dir = tmp_path / "prompts_per_dimension"
    prompts_dir.mkdir()
    (prompts_dir / f"{DIMENSION}.txt").write_text("\n".join(suite_prompts))
    export_vbench(store, dest, layout="per-dimension", prompts_dir=prompts_dir)
    found = found_by_vbench(vbench, full_info, dest / "videos" / DIMENSION, tmp_path)
    assert [len(found[prompt]) for prompt in suite_prompts] == [5, 5]


def test_custom_mode_reads_every_video_with_its_prompt_from_the_prompt_file(
    vbench, full_info, suite_prompts, store, dest, tmp_path
):
    export_vbench(store, dest, mode="custom")
    with open(dest / "vbench_prompts.json") as f:  # as vbench/launch/evaluate.py reads it
        prompt_file = json.load(f)
    assert type(prompt_file) is dict  # its own check: {"video_path": prompt, ...}
    found = found_by_vbench(
        vbench, full_info, dest / "videos", tmp_path, prompt_list=prompt_file, mode="custom_input"
    )
    assert {prompt: len(videos) for prompt, videos in found.items()} == {
        prompt: 5 for prompt in suite_prompts
    }


def test_custom_mode_gives_vbench_the_prompt_a_file_name_cannot_hold(vbench, full_info, tmp_path):
    store = Store(str(tmp_path / "out"))
    commit_item(store, item_dict("d0", "day/night over a city", 0))
    export_vbench(store, tmp_path / "dest", mode="custom")
    prompt_file = json.loads((tmp_path / "dest" / "vbench_prompts.json").read_text())
    found = found_by_vbench(
        vbench,
        full_info,
        tmp_path / "dest" / "videos",
        tmp_path,
        prompt_list=prompt_file,
        mode="custom_input",
    )
    assert list(found) == ["day/night over a city"]


def test_the_reader_finds_nothing_when_another_file_is_listed_first(
    vbench, full_info, suite_prompts, store, tmp_path
):
    """Why nothing but videos goes into the videos folder: on tmpfs the newest file is listed
    first, and VBench takes every video's extension from it."""
    shm = _tmpfs()
    if shm is None:
        pytest.skip("no writable tmpfs at /dev/shm")
    folder = shm / f"pusa-vbench-strict-{os.getpid()}"
    try:
        export_vbench(store, folder)
        (folder / "videos" / "notes.jsonl").write_text("{}\n")
        if os.listdir(folder / "videos")[0] != "notes.jsonl":
            pytest.skip("this tmpfs does not list the newest file first")
        found = found_by_vbench(vbench, full_info, folder / "videos", tmp_path)
        assert [len(found[prompt]) for prompt in suite_prompts] == [0, 0]
    finally:
        for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        folder.rmdir()
