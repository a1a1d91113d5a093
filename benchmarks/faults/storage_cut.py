"""Fault: the output root's S3 endpoint cut mid-run, through a loopback TCP proxy.

A moto S3 server runs on 127.0.0.1 with `process_support.TcpProxy` in front; `pusa-batch run`
writes through the proxy (botocore retries off, 1 s timeouts, `--storage-timeout T`). Once an
item is committed the proxy is cut (`--mode`: refuse, reset or blackhole; see TcpProxy):
- a short cut (`--short-s`, below T) is restored; the run must ride it out, print "storage
  unreachable, retrying" and exit 0 with every id done once;
- a long cut (until the run ends, at most `--long-s`) must end the run with a storage error that
  names the endpoint's reachability (exit 1), with nothing corrupt counted done (`verify`, read
  past the proxy); the same command once the cut ends must complete.
Figures per round: exit codes, time from the cut to the run's end (long cuts: time to detect),
and lost / duplicated / regenerated read straight from the server.

    python benchmarks/faults/storage_cut.py [--rounds N] [--items N] [--timeout-s T] [--mode M]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import s3fs
from fault_support import cli, figures, first_traceback, run_command, wait_for, write_manifest
from process_support import TcpProxy
from s3server import ACCESS_KEY, REGION, SECRET_KEY, s3_server

BUCKET = "faults"
FLAKY = {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 0}}


def options(endpoint: str, **extra) -> dict:
    return {
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
        **extra,
    }


def flags(storage_options: dict) -> list[str]:
    found = []
    for key, value in storage_options.items():
        found += ["--storage-option", f"{key}={json.dumps(value)}"]
    return found


def s3_markers(fs: s3fs.S3FileSystem, path: str) -> dict[str, dict]:
    fs.invalidate_cache()
    try:
        names = fs.ls(f"{path}/items", detail=False)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        try:
            found[name.rsplit("/", 1)[1][:-5]] = json.loads(fs.cat_file(name))
        except (ValueError, FileNotFoundError):
            continue
    return found


def s3_verdict(fs, path: str, ids: set[str], before: dict[str, dict]) -> dict[str, int]:
    done = s3_markers(fs, path)
    try:
        listing = fs.ls(f"{path}/videos", detail=True)
        sizes = {i["name"].rsplit("/", 1)[1][:-4]: i["size"] for i in listing}
    except FileNotFoundError:
        sizes = {}
    whole = {i for i, m in done.items() if sizes.get(i) == m.get("video_bytes")}
    return {
        "lost": len(ids - whole),
        "duplicated": len((set(done) | set(sizes)) - ids),
        "regenerated": sum(
            i in done and done[i]["committed_at"] != m["committed_at"] for i, m in before.items()
        ),
    }


def one_round(kind: str, args, proxy: TcpProxy, direct: dict, folder) -> dict:
    fs = s3fs.S3FileSystem(**direct, skip_instance_cache=True, use_listings_cache=False)
    path = f"{BUCKET}/cut-{uuid.uuid4().hex[:8]}"
    manifest = write_manifest(folder, args.items, steps=args.steps, prefix=kind[0])
    ids = {f"{kind[0]}{n:03d}" for n in range(args.items)}
    through = flags(options(proxy.endpoint, config_kwargs=FLAKY))
    timeout = ["--storage-timeout", str(args.timeout_s)]
    command = run_command(manifest, f"s3://{path}", *through, *timeout)
    log = folder / f"{kind}.log"
    with open(log, "wb") as sink:
        driver = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    wait_for(lambda: s3_markers(fs, path) or driver.poll() is not None, "the first commit")
    before = s3_markers(fs, path)
    if not before:  # the run ended before its first commit: Ray did not start (a busy machine)
        return {"cut": kind, "setup_failed": first_traceback(log.read_text(errors="replace"))}
    proxy.cut(args.mode)
    cut_at = time.monotonic()
    if kind == "short":
        time.sleep(args.short_s)
        proxy.restore()
        rc = driver.wait(timeout=900)
        ended_s = time.monotonic() - cut_at
    else:
        try:
            rc = driver.wait(timeout=args.long_s)
        except subprocess.TimeoutExpired:
            driver.kill()
            rc = "hung"
        ended_s = time.monotonic() - cut_at
        proxy.restore()
    printed = log.read_text(errors="replace")
    said = " ".join(printed.split())
    result = {
        "cut": kind,
        "mode": args.mode,
        "rc": rc,
        "done_at_cut": len(before),
        "ended_after_cut_s": round(ended_s, 1),
        "retrying_notice": "storage unreachable, retrying" in said,
        "traceback": first_traceback(printed),
    }
    if kind == "long":
        result["names_reachability"] = "cannot be reached" in said
        result["verify_rc"] = cli("verify", f"s3://{path}", *flags(direct)).returncode
        started = time.monotonic()
        result["rerun_rc"] = subprocess.run(command, capture_output=True, timeout=900).returncode
        result["rerun_s"] = round(time.monotonic() - started, 1)
        errors = [line for line in printed.splitlines() if line.startswith("Error")]
        result["error_line"] = (errors or [""])[0][:300]
    return {**result, **s3_verdict(fs, path, ids, before)}


def passed(r: dict) -> bool:
    whole = not r["lost"] and not r["duplicated"] and not r["regenerated"]
    if r["cut"] == "short":
        return r["rc"] == 0 and r["retrying_notice"] and whole
    return (
        r["rc"] == 1
        and r["names_reachability"]
        and r["verify_rc"] == 0
        and r["rerun_rc"] == 0
        and whole
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="short and long cuts each")
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=20.0, help="the run's --storage-timeout")
    parser.add_argument("--short-s", type=float, default=8.0)
    parser.add_argument("--long-s", type=float, default=300.0)
    parser.add_argument("--mode", choices=["refuse", "reset", "blackhole"], default="refuse")
    parser.add_argument("--cuts", default="short,long", help="which cuts each round makes")
    args = parser.parse_args()
    import tempfile
    from pathlib import Path

    results = []
    with s3_server() as server, TcpProxy(urlsplit(server.endpoint).port) as proxy:
        server.make_bucket(BUCKET)
        direct = options(server.endpoint)
        for n in range(args.rounds):
            for kind in args.cuts.split(","):
                for _ in range(3):  # a run whose Ray did not start is tried again
                    with tempfile.TemporaryDirectory(prefix="pbsc-") as tmp:
                        result = one_round(kind, args, proxy, direct, Path(tmp))
                    if "setup_failed" not in result:
                        break
                    print(f"round {n + 1} {kind}: {json.dumps(result)}; again", flush=True)
                results.append(result)
                print(f"round {n + 1} {kind}: {json.dumps(result)}", flush=True)
    longs = [r for r in results if r["cut"] == "long"]
    print(
        figures(
            "storage_cut",
            all(passed(r) for r in results),
            mode=args.mode,
            rounds=args.rounds,
            cuts=len(results),
            items=args.items * len(results),
            lost=sum(r["lost"] for r in results),
            duplicated=sum(r["duplicated"] for r in results),
            regenerated=sum(r["regenerated"] for r in results),
            short_cuts_ridden_out=sum(r["rc"] == 0 for r in results if r["cut"] == "short"),
            long_cut_detect_s_max=max((r["ended_after_cut_s"] for r in longs), default=0),
        )
    )
    return 0 if all(passed(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
