"""The test bed soak.py and chaos.py share: the benchmark's two namespaces, gen, one applianced
tree, and a teardown that runs whatever happened (an error, Ctrl-C, SIGTERM).

Everything started is stopped by its PID; every namespace and mount created is removed; a
cleanup registered by a scenario (SIGCONT to a process it stopped, say) runs first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.env import (
    APP_NS,
    GEN_NS,
    MIX,
    BenchError,
    Netns,
    compile_tools,
    find_applianced,
    header_facts,
)
from harness.measure import wait_healthy
from harness.product import Ctl, find_appliancectl
from harness.targets import Target, machine_noise, run_gen


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def check_host(tool: str) -> str | None:
    """Why this tool cannot run here, or None."""
    if os.geteuid() != 0:
        return f"{tool} needs root (network namespaces, raw sockets)"
    for exe in ("ip", "taskset", "gcc", "mount", "umount"):
        if shutil.which(exe) is None:
            return f"{tool} needs `{exe}`"
    if len(os.sched_getaffinity(0)) < 2:
        return f"{tool} needs 2 CPUs: one for the generator, one for the appliance"
    return None


class TreeWatcher:
    """Notes the descendants of every watched target twice a second, so a teardown can stop
    them by PID even after their parent died: applianced's health service deliberately outlives
    a supervisor that crashed, and is then no longer anyone's child we could find."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.targets: list[Target] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, target: Target) -> None:
        with self.lock:
            target.tree()
            self.targets.append(target)

    def forget(self, target: Target) -> None:
        with self.lock:
            if target in self.targets:
                self.targets.remove(target)
                if target.alive():
                    target.tree()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with self.lock:
                for target in self.targets:
                    if target.alive():
                        target.tree()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self.lock:
            self.targets.clear()


class Bed:
    def __init__(self, prefix: str, applianced: str | None, keep: bool) -> None:
        signal.signal(signal.SIGTERM, _raise_interrupt)
        signal.signal(signal.SIGHUP, _raise_interrupt)
        allowed = sorted(os.sched_getaffinity(0))
        self.cpus = (allowed[0], allowed[1])
        # This process and its children (appliancectl, pollers) stay off the appliance's CPU.
        os.sched_setaffinity(0, {self.cpus[0]})
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        self.netns = Netns()
        self.started: list[Target] = []
        self.mounts: list[Path] = []
        self.cleanups: list[Callable[[], None]] = []
        self.facts: dict[str, Any] = header_facts()
        self.applianced = find_applianced(applianced)
        self.appliancectl = find_appliancectl(self.applianced)
        self.tools: dict[str, str] = {}
        self.watcher = TreeWatcher()

    def up(self, noise_seconds: float = 1.0) -> None:
        self.tools = compile_tools(self.work)
        self.facts.update(
            gcc=self.tools["gcc"],
            applianced=self.applianced,
            cpus=self.cpus,
            load_average_before=os.getloadavg(),
            namespaces=[GEN_NS, APP_NS],
        )
        self.facts["noise"] = machine_noise(self.tools["gen"], self.cpus, noise_seconds)
        busy = [c for c, n in self.facts["noise"].items() if n["busy_pct_before"] > 10]
        if busy:
            print(
                f"warning: {', '.join(busy)} already busy before the run "
                f"(load average {os.getloadavg()[0]:.2f}): figures will be noisy",
                file=sys.stderr,
            )
        self.netns.up()

    def start_product(
        self, config: Path, workers: int, app_cpus: str, runtime: Path
    ) -> tuple[Target, Ctl]:
        """applianced with `config` and `--workers N`, its tree pinned to `app_cpus`; returns once
        it answers health probes with 200 and the mix with replies."""
        argv = [self.applianced, "--config", str(config), "--workers", str(workers)]
        target = Target("applianced", argv, app_cpus, self.work)
        self.started.append(target)
        target.wait_ready()
        self.watcher.watch(target)
        wait_healthy(target, self.tools["gen"], self.cpus[0])
        for _ in range(20):  # first packets on every path of the mix (as run.py's warm-up)
            warm = run_gen(
                self.tools["gen"],
                self.cpus[0],
                "flood",
                64,
                MIX,
                0.3,
                16,
                100_000,
                10.0,
                rx_nap_us=100,
            )
            if warm["received"] or not target.alive():
                break
            time.sleep(0.5)
        if not warm["received"]:
            raise BenchError(f"applianced answered no warm-up packet:\n{target.tail()}")
        return target, Ctl(self.appliancectl, runtime / "control.sock")

    def stop_target(self, target: Target) -> int | None:
        """Stop a target and everything it left behind (by PID); its exit code."""
        self.watcher.forget(target)
        return target.stop()

    def mount_tmpfs(self, path: Path, size: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            check=True,
            timeout=30,
        )
        self.mounts.append(path)

    def close(self) -> int:
        """Tear everything down; 0, or 1 when something could not be removed."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish the cleanup whatever comes now
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        status = 0
        self.watcher.close()
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as error:  # keep cleaning up whatever failed
                print(f"cleanup: {error}", file=sys.stderr)
        for target in self.started:
            try:
                target.stop()
            except Exception as error:
                print(f"cleanup: stopping {target.name} ({target.pid}): {error}", file=sys.stderr)
        for path in reversed(self.mounts):
            proc = subprocess.run(
                ["umount", str(path)], capture_output=True, text=True, check=False, timeout=30
            )
            if proc.returncode != 0:
                print(f"cleanup: umount {path}: {proc.stderr.strip()}; lazily", file=sys.stderr)
                lazy = subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)
                status = status or int(lazy.returncode != 0)
        for problem in self.netns.down():
            print(f"cleanup: {problem}", file=sys.stderr)
            status = 1
        if self.keep:
            print(f"kept {self.work}", file=sys.stderr)
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.work)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return status
