#!/usr/bin/env python3
"""Runs the workspace's tests as `cargo test --workspace` does, but several test binaries at a time.

`cargo test` runs one test binary after another. Most of ours spend their time waiting on a control plane, a
vault fault or a refresh interval, not on the CPU, so the suite's wall time was the sum of its slowest binaries.
This builds every test binary once (`cargo test --no-run`), then runs them in `--jobs` lanes, longest first
(by the last run's times, kept in the target directory). Binaries that start the node (kubelet, containerd) run
one after another, in one lane: two nodes on one machine would share its cgroups and CNI state.

Each binary's output goes to a log file and is printed whole when it fails. Arguments after `--` go to every
test binary (e.g. a name filter). Exits non-zero when any binary failed or the build did.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# Test binaries that start the node (`ControlPlane::shared_with_node`): never two at once.
NODE_BINARIES = {"vaultsync-csi::kubelet", "vaultsync-e2e::node"}


def build(cargo: str) -> list[dict]:
    """Builds every test target of the workspace and returns what to run: name, executable, package directory."""
    command = [cargo, "test", "--workspace", "--locked", "--no-run", "--message-format=json-render-diagnostics"]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"run-tests: building the tests failed ({proc.returncode})")
    binaries = []
    for line in proc.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact" or not message.get("executable"):
            continue
        if not message["profile"]["test"]:
            continue
        package = message["package_id"]
        manifest = Path(message["manifest_path"])
        name = f"{package_name(package, manifest)}::{message['target']['name']}"
        binaries.append({"name": name, "executable": message["executable"], "dir": str(manifest.parent),
                         "package": package_name(package, manifest)})
    return binaries


def package_name(package_id: str, manifest: Path) -> str:
    # `path+file:///…/operator#vaultsync-operator@0.1.0` (newer cargo) or `vaultsync-operator 0.1.0 (path+…)`.
    if "#" in package_id:
        tail = package_id.rsplit("#", 1)[1]
        return tail.split("@", 1)[0] if "@" in tail else manifest.parent.name
    return package_id.split(" ", 1)[0]


class Runner:
    def __init__(self, logs: Path, test_args: list[str]):
        self.logs = logs
        self.test_args = test_args
        self.lock = threading.Lock()
        self.failed: list[str] = []
        self.times: dict[str, float] = {}

    def run(self, binary: dict) -> None:
        log = self.logs / (binary["name"].replace("::", "--") + ".log")
        env = dict(os.environ, CARGO_MANIFEST_DIR=binary["dir"], CARGO_PKG_NAME=binary["package"])
        started = time.monotonic()
        with open(log, "w") as out:
            code = subprocess.run([binary["executable"], *self.test_args], cwd=binary["dir"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT).returncode
        took = time.monotonic() - started
        text = log.read_text(errors="replace")
        summary = next((line for line in reversed(text.splitlines()) if line.startswith("test result:")), "")
        with self.lock:
            self.times[binary["name"]] = took
            if code == 0:
                print(f"ok     {binary['name']:45} {took:7.1f} s  {summary.removeprefix('test result: ok. ')}",
                      flush=True)
            else:
                self.failed.append(binary["name"])
                print(f"FAILED {binary['name']} after {took:.1f} s (exit {code}); its output:\n{text}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("VAULTSYNC_TEST_JOBS", "2")),
                        help="test binaries run at once (default 2, or VAULTSYNC_TEST_JOBS)")
    parser.add_argument("test_args", nargs="*", help="passed to every test binary")
    args = parser.parse_args()
    cargo = os.environ.get("CARGO", "cargo")
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    logs = target / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    times_file = target / "test-times.json"
    try:
        last_times = json.loads(times_file.read_text())
    except (OSError, ValueError):
        last_times = {}

    binaries = build(cargo)
    # Jobs: each binary alone, except the node binaries, which form one job run in order.
    node = [b for b in binaries if b["name"] in NODE_BINARIES]
    jobs = [[b] for b in binaries if b["name"] not in NODE_BINARIES] + ([node] if node else [])
    # Longest first, so the last lane to finish is not the one that started the slowest binary last. Unknown
    # binaries count as long: a new test file is more likely slow than instant.
    jobs.sort(key=lambda job: -sum(last_times.get(b["name"], 60.0) for b in job))
    runner = Runner(logs, args.test_args)
    queue = list(jobs)
    queue_lock = threading.Lock()

    def lane() -> None:
        while True:
            with queue_lock:
                if not queue:
                    return
                job = queue.pop(0)
            for binary in job:
                runner.run(binary)

    started = time.monotonic()
    print(f"run-tests: {len(binaries)} test binaries in {max(1, args.jobs)} lanes", flush=True)
    lanes = [threading.Thread(target=lane) for _ in range(max(1, args.jobs))]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    times_file.write_text(json.dumps({**last_times, **runner.times}, indent=1, sort_keys=True))
    took = time.monotonic() - started
    if runner.failed:
        sys.exit(f"run-tests: {len(runner.failed)} of {len(binaries)} test binaries failed after {took:.0f} s: "
                 + ", ".join(runner.failed))
    print(f"run-tests: all {len(binaries)} test binaries passed in {took:.0f} s", flush=True)


if __name__ == "__main__":
    main()
