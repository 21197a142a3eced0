"""A Debian root with systemd as PID 1, booted with systemd-nspawn, with the appliance installed.

Why a container and not the host: the unit's promises (READY=1 before "active", the user and the
three capabilities, reload, the restart after a crash, stopping the whole cgroup, systemd's own
security verdict) only mean something under a real systemd, and this machine's PID 1 may not be
one. `mmdebstrap` builds a root from Debian's packages (about 20 s), cached by its recipe as a
tarball; each run unpacks a fresh copy, boots it with `systemd-nspawn --boot --private-network`
and talks to it with `nsenter` (systemctl, journalctl and python3 inside it).

The product goes in the way the AMI puts it there (deploy/packer/provision.sh): a wheelhouse built
here (the product's wheel from the source tree, its dependencies as CPython 3.11 manylinux wheels,
the dependencies cached by their requirements), then inside the root a venv under
/opt/gwlb-appliance/venv, `pip install --no-index --find-links`, `systemd-sysusers`, the site
config root:gwlb-appliance 0640, the unit in /usr/lib/systemd/system, `systemd-analyze verify`.

The network: only loopback exists inside --private-network, so a veth pair is added with both ends
inside the container's namespace (198.18.250.0/24, eth0 at MTU 1500 with the default route), and
the site config keeps `[interface] manage = true` as an appliance instance's does: the daemon then
really changes eth0's MTU and rp_filter with the unit's CAP_NET_ADMIN, under its sandbox.

Cleanup: the container is shut down (SIGTERM to systemd-nspawn, SIGKILL after a grace period, by
pid), the unpacked root, the wheelhouse and the cgroups made for the container are removed. Only
the cache stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT_FILE = REPO / "deploy" / "systemd" / "gwlb-appliance.service"
SYSUSERS_FILE = REPO / "deploy" / "systemd" / "gwlb-appliance.sysusers"

SUITE = "bookworm"
# python3-venv: ensurepip for the venv; procps: /bin/kill, which the unit's ExecReload= runs (on
# Amazon Linux 2023 util-linux provides it).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps")
CONTAINER_PYTHON = "3.11"  # bookworm's python3, and the AMI's python3.11
GLIBCS = ("2_34", "2_28", "2_17")  # manylinux wheels AL2023 loads, as build-wheelhouse.sh picks
RECIPE = 1  # bump when the root's recipe changes in a way its argv does not show

UNIT = "gwlb-appliance.service"
PREFIX = "/opt/gwlb-appliance"
VENV = f"{PREFIX}/venv"
SITE_CONFIG = "/etc/gwlb-appliance/appliance.toml"
SERVICE_USER = "gwlb-appliance"
STAGING = "/var/tmp/gwlb-staging"  # inside the root, like Packer's upload directory

APPLIANCE_IP, PEER_IP, SUBNET = "198.18.250.2", "198.18.250.1", "198.18.250.0/24"
BOOT_MTU = 1500
# Like the site config cloud-init writes (deploy/cloud-init/user-data.yaml), for this subnet.
SITE_TOML = f"""\
# Written by tests/systemd for the container: the shape of the cloud-init site config.
[dataplane]
port = 6081
allow_sources = ["{SUBNET}"]

[interface]
manage = true               # as on an appliance instance: eth0 gets MTU 9001 and rp_filter 2

[health]
enabled = true
port = 80

[[policy.rules]]
name = "drop-me"
action = "drop"
match = {{ protocol = "udp", port = 3000, payload_contains = "drop me" }}
"""

CONTAINER_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "SYSTEMD_PAGER=",
    "SYSTEMD_COLORS=0",
)
TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "ip": "iproute2",
}


class ContainerError(RuntimeError):
    """The root could not be built, booted or provisioned; the message says which step and why."""


def missing_tools() -> list[str]:
    """What this host lacks to run the container, as sentences (empty: nothing)."""
    missing = [
        f"{tool} (Debian package {package})"
        for tool, package in TOOLS.items()
        if shutil.which(tool) is None
    ]
    if os.geteuid() != 0:
        missing.append("root (mmdebstrap's root mode, systemd-nspawn)")
    return missing


def _run(argv: Sequence[str], timeout_s: float, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout_s, check=False, **kw
    )
    if proc.returncode != 0:
        raise ContainerError(
            f"{' '.join(argv[:6])} ... failed ({proc.returncode}):\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc


# ---- the root, cached by its recipe -------------------------------------------------------------


def _mmdebstrap_argv(target: Path) -> list[str]:
    return [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(target),
    ]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def root_tarball(cache: Path) -> tuple[Path, bool]:
    """The root as a tarball, built unless the cache has one of this recipe; (path, was built)."""
    key = _key(RECIPE, _mmdebstrap_argv(Path("TARGET")), platform.machine())
    cached = cache / f"root-{key}.tar"
    if cached.exists():
        return cached, False
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".root-{key}.{os.getpid()}.tar"
    try:
        _run(_mmdebstrap_argv(partial), timeout_s=600)
        partial.replace(cached)
    finally:
        partial.unlink(missing_ok=True)
    for stale in cache.glob("root-*.tar"):  # one root at a time: the cache does not grow
        if stale != cached:
            stale.unlink(missing_ok=True)
    return cached, True


# ---- the wheelhouse, as build-wheelhouse.sh makes it ---------------------------------------------

_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    ".hypothesis", ".terraform", "tests", "deploy",
)  # fmt: skip


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    return sorted(line for line in metadata.splitlines() if line.startswith("Requires-Dist:"))


def build_wheelhouse(source: Path, cache: Path, out: Path) -> Path:
    """The product's wheel (built from a copy of `source`) and all its dependencies, in `out`."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    with tempfile.TemporaryDirectory(prefix="gwlb-src-") as scratch:
        tree = Path(scratch) / "src"  # a copy: setuptools leaves build/ and *.egg-info behind
        shutil.copytree(source, tree, ignore=_NOT_SOURCE)
        _run([*pip, "wheel", "--no-deps", "--wheel-dir", str(out), str(tree)], timeout_s=300)
    (wheel,) = out.glob("gwlb_appliance-*.whl")
    machine = platform.machine()
    deps = cache / f"wheels-{_key(RECIPE, _requirements(wheel), CONTAINER_PYTHON, machine)}"
    if not deps.exists():
        partial = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache))
        try:
            _run(
                [
                    *pip, "download", "--dest", str(partial), "--only-binary=:all:",
                    "--python-version", CONTAINER_PYTHON, "--implementation", "cp",
                    *(f"--platform=manylinux_{glibc}_{machine}" for glibc in GLIBCS),
                    str(wheel),
                ],
                timeout_s=300,
            )  # fmt: skip
            for own in partial.glob("gwlb_appliance-*.whl"):
                own.unlink()
            partial.rename(deps)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        for stale in cache.glob("wheels-*"):
            if stale != deps:
                shutil.rmtree(stale, ignore_errors=True)
    for dependency in deps.glob("*.whl"):
        shutil.copy2(dependency, out)
    return wheel


# ---- cgroups for the container -------------------------------------------------------------------


def _cgroup_parents() -> list[Path]:
    """This process's cgroup in the cgroup2 and the name=systemd hierarchies that are mounted."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if number == "0":
            own["cgroup2"] = path
        elif "name=systemd" in controllers.split(","):
            own["name=systemd"] = path
    parents = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        mountpoint = fields[0].split()[4]
        fstype, _, options = fields[1].split()[:3]
        if fstype == "cgroup2" and "cgroup2" in own:
            parents.append(Path(mountpoint + own.pop("cgroup2")))
        elif fstype == "cgroup" and "name=systemd" in options.split(",") and "name=systemd" in own:
            parents.append(Path(mountpoint + own.pop("name=systemd")))
    return parents


def _remove_cgroup(top: Path) -> None:
    """Remove a cgroup tree we made; anything still in it is one of the container's processes."""
    if not top.exists():
        return
    for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            for pid in Path(directory, "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # a killed process leaves its cgroup a moment later


# ---- the running container -----------------------------------------------------------------------


@dataclass
class Machine:
    """A booted container: run commands in it with `run`, python3 code with `python`."""

    root: Path
    leader: int  # the container's PID 1, as the host sees it
    nspawn: subprocess.Popen[bytes]
    console: Path  # the container's console output (boot messages)

    def run(
        self, *argv: str, timeout_s: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = ["nsenter", "-t", str(self.leader), "-a", "/usr/bin/env", "-i", *CONTAINER_ENV]
        proc = subprocess.run(
            [*command, *argv], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and proc.returncode != 0:
            raise ContainerError(
                f"in the container: {' '.join(argv)[:200]} failed ({proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr)[-3000:]}"
            )
        return proc

    def python(self, code: str, *args: str, timeout_s: float = 60) -> str:
        """Run python3 code inside the container (its own Python, not the venv); its stdout."""
        return self.run("/usr/bin/python3", "-c", code, *args, timeout_s=timeout_s).stdout

    def host_netns(self, *argv: str) -> None:
        """Run a host program (ip) inside the container's network namespace only."""
        _run(["nsenter", "-t", str(self.leader), "-n", *argv], timeout_s=30)

    def show(self, *properties: str, unit: str = UNIT) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = UNIT, lines: int = 60) -> str:
        proc = self.run(
            "journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-monotonic",
            check=False,
        )  # fmt: skip
        return proc.stdout + proc.stderr

    def console_tail(self, limit: int = 3000) -> str:
        return self.console.read_text(errors="replace")[-limit:] if self.console.exists() else ""


def _find_leader(nspawn: subprocess.Popen[bytes], timeout_s: float) -> int:
    """The container's PID 1: the child of systemd-nspawn that is PID 1 of its own namespace."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited with {nspawn.returncode} while booting")
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
            for child in children:
                status = Path(f"/proc/{child}/status").read_text()
                nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M)
                if nspid and nspid.group(1).split()[-1] == "1":
                    return int(child)
        time.sleep(0.05)
    raise ContainerError(f"no container PID 1 under systemd-nspawn after {timeout_s} s")


def _wait_booted(machine: Machine, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        proc = machine.run(
            "systemctl", "is-system-running", "--wait", timeout_s=timeout_s, check=False
        )
        state = proc.stdout.strip()
        if state in ("running", "degraded", "maintenance", "stopping"):
            return state
        time.sleep(0.2)  # before systemd listens on its private socket
    raise ContainerError(f"the container did not finish booting in {timeout_s} s ({state!r})")


def _stop(nspawn: subprocess.Popen[bytes], leader: int | None, grace_s: float) -> None:
    if nspawn.poll() is None:
        nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            nspawn.wait(grace_s)
        except subprocess.TimeoutExpired:
            if leader:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leader, signal.SIGKILL)  # PID 1 of its namespace: all of it goes
            nspawn.kill()
            nspawn.wait(10)


@contextlib.contextmanager
def booted(root_tar: Path, workdir: Path) -> Iterator[Machine]:
    """Unpack the root into `workdir`, boot it, and stop and remove everything afterwards."""
    name = f"gwlb-systemd-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    root = workdir / name
    root.mkdir()
    # Its own cgroup, so nspawn's payload/ and supervisor/ subgroups are this container's alone
    # (systemd-nspawn --keep-unit makes them under the cgroup it was started in).
    cgroups = [parent / name for parent in _cgroup_parents()]
    console = workdir / f"{name}.console"
    nspawn = None
    leader = None
    try:
        _run(["tar", "-C", str(root), "-xf", str(root_tar)], timeout_s=120)
        for cgroup in cgroups:
            cgroup.mkdir()
        join = "".join(f'echo $$ > "{cgroup}/cgroup.procs"; ' for cgroup in cgroups)
        argv = [
            "sh", "-c", join + 'exec "$@"', "sh",
            "systemd-nspawn", "--quiet", "-D", str(root), f"--machine={name}",
            "--boot", "--register=no", "--keep-unit", "--private-network",
            "--console=read-only",
        ]  # fmt: skip
        with console.open("wb") as out:
            nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        leader = _find_leader(nspawn, 30)
        machine = Machine(root, leader, nspawn, console)
        try:
            _wait_booted(machine, 60)
        except ContainerError as error:
            raise ContainerError(f"{error}\nconsole:\n{machine.console_tail()}") from None
        yield machine
    finally:
        if nspawn is not None:
            _stop(nspawn, leader, grace_s=20)
        for cgroup in cgroups:
            _remove_cgroup(cgroup)
        shutil.rmtree(root, ignore_errors=True)
        console.unlink(missing_ok=True)


# ---- provisioning, as deploy/packer/provision.sh does it -----------------------------------------


def add_network(machine: Machine) -> None:
    """eth0 (MTU 1500, the default route) and its peer, both inside the container's namespace."""
    steps = [
        ("link", "add", "eth0", "mtu", str(BOOT_MTU), "type", "veth", "peer", "name", "peer0"),
        ("addr", "add", f"{APPLIANCE_IP}/24", "dev", "eth0"),
        ("addr", "add", f"{PEER_IP}/24", "dev", "peer0"),
        ("link", "set", "lo", "up"),
        ("link", "set", "eth0", "up"),
        ("link", "set", "peer0", "up"),
        ("route", "add", "default", "via", PEER_IP, "dev", "eth0"),
    ]
    for step in steps:
        machine.host_netns("ip", *step)


def stage(machine: Machine, wheelhouse: Path) -> None:
    """What Packer uploads: the wheelhouse, the unit, the sysusers file, the site config."""
    staging = machine.root / STAGING.lstrip("/")
    shutil.copytree(wheelhouse, staging / "wheelhouse")
    shutil.copy2(UNIT_FILE, staging / UNIT_FILE.name)
    shutil.copy2(SYSUSERS_FILE, staging / SYSUSERS_FILE.name)
    (staging / "appliance.toml").write_text(SITE_TOML)


def provision(machine: Machine, wheel_name: str) -> None:
    """provision.sh's steps for a Debian root: venv, user, config, unit."""
    wheelhouse = f"{STAGING}/wheelhouse"
    script = f"""
set -eu
python3 -m venv {VENV}
{VENV}/bin/python -m pip install --no-index --find-links {wheelhouse} --no-cache-dir \\
    --disable-pip-version-check --quiet {wheelhouse}/{wheel_name}
{VENV}/bin/python -m pip check --disable-pip-version-check
install -D -m 0644 {STAGING}/{SYSUSERS_FILE.name} /usr/lib/sysusers.d/gwlb-appliance.conf
systemd-sysusers /usr/lib/sysusers.d/gwlb-appliance.conf
getent passwd {SERVICE_USER} >/dev/null
install -d -m 0750 -o root -g {SERVICE_USER} /etc/gwlb-appliance
install -m 0640 -o root -g {SERVICE_USER} {STAGING}/appliance.toml {SITE_CONFIG}
{VENV}/bin/python -c \\
    'import sys; from config.loader import load_config; load_config(sys.argv[1])' {SITE_CONFIG}
install -D -m 0644 {STAGING}/{UNIT_FILE.name} /usr/lib/systemd/system/{UNIT}
systemctl daemon-reload
systemctl enable {UNIT}
rm -rf {STAGING}
"""
    machine.run("sh", "-c", script, timeout_s=300)


def verify_unit(machine: Machine) -> tuple[int, str]:
    """`systemd-analyze verify` of the installed unit, as provision.sh runs it: (exit, words)."""
    proc = machine.run("systemd-analyze", "verify", "--man=no", UNIT, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()
