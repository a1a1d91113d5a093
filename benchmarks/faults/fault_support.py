"""What the fault scripts share: the tiny manifest, the CLI command, and reading a root back.

A root is judged from its files alone: `markers` (items/*.json that parse), `videos`, and
`verdict`, which counts lost (an id with no marker, or whose video does not have the recorded
size), duplicated (a video or marker that no manifest id explains) and regenerated (an item
committed before the fault whose `committed_at` changed since).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "pipelines" / "tiny.toml"
sys.path.insert(0, str(ROOT / "tests"))  # process_support: free ports, descendants, TcpProxy


def write_manifest(folder: Path, items: int, steps: int = 150, prefix: str = "k") -> Path:
    """`items` t2v rows of 5 frames at 32x32; `steps` sets how long each samples."""
    rows = [f"{prefix}{n:03d},t2v,a scene {n},{n},5,32,32,{steps}" for n in range(items)]
    manifest = folder / "m.csv"
    manifest.write_text("id,task,prompt,seed,num_frames,height,width,steps\n" + "\n".join(rows))
    return manifest


def ids_of(manifest: Path) -> set[str]:
    return {line.split(",", 1)[0] for line in manifest.read_text().splitlines()[1:]}


def run_command(manifest: Path, out: str | Path, *extra: str, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pusa_batch",
        "run",
        str(manifest),
        "-o",
        str(out),
        "--pipeline",
        str(TINY),
        "--workers",
        str(workers),
        "--no-progress",
        *extra,
    ]


def cli(*args: str, timeout_s: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pusa_batch", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env=env,
    )


def markers(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted((out / "items").glob("*.json")) if (out / "items").is_dir() else ():
        try:
            found[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue
    return found


def videos(out: Path) -> dict[str, int]:
    folder = out / "videos"
    return {p.stem: p.stat().st_size for p in folder.glob("*.mp4")} if folder.is_dir() else {}


def verdict(out: Path, ids: set[str], before: dict[str, dict] | None = None) -> dict[str, int]:
    """lost / duplicated / regenerated (see the module docstring) of the root as it is now."""
    done, sizes = markers(out), videos(out)
    whole = {i for i, m in done.items() if sizes.get(i) == m.get("video_bytes")}
    before = before or {}
    return {
        "lost": len(ids - whole),
        "duplicated": len((set(done) | set(sizes)) - ids),
        "regenerated": sum(
            i in done and done[i].get("committed_at") != m.get("committed_at")
            for i, m in before.items()
        ),
    }


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 600) -> float:
    """Poll `predicate` every 50 ms; return the monotonic time it held, or raise naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what} after {timeout_s:.0f} s")
        time.sleep(0.05)
    return time.monotonic()


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def figures(name: str, ok: bool, **counts) -> str:
    """The summary line every fault script ends with: FAULTS name k=v ... pass|miss."""
    fields = " ".join(f"{k}={v}" for k, v in counts.items())
    return f"FAULTS {name} {fields} {'pass' if ok else 'miss'}"


def first_traceback(text: str) -> str | None:
    """Where the first Python traceback in `text` was raised, and its exception line."""
    lines = text.splitlines()
    start = next((n for n, line in enumerate(lines) if line.startswith("Traceback")), None)
    if start is None:
        return None
    frames = [line.strip() for line in lines[start + 1 :] if line.strip().startswith("File ")]
    end = next((line for line in lines[start + 1 :] if line and not line.startswith(" ")), "")
    return f"{frames[-1] if frames else '?'} -> {end}"[:400]


def retried(one_round: Callable[[], dict], label: str, tries: int = 3) -> dict:
    """`one_round()` again (at most `tries` times) while it reports `setup_failed`: on a busy
    machine Ray may not start within its own 30 s, and that round never saw the fault."""
    for attempt in range(tries):
        result = one_round()
        if "setup_failed" not in result or attempt == tries - 1:
            return result
        print(f"{label}: setup failed, again: {json.dumps(result)}", flush=True)
    return result


def each_round(rounds: int, one_round: Callable[[], dict]) -> Iterator[dict]:
    """Each round's result (`retried` when its setup failed), printed as it comes."""
    for n in range(rounds):
        result = retried(one_round, f"round {n + 1}")
        print(f"round {n + 1}: {json.dumps(result)}", flush=True)
        yield result
