"""Startup interface configuration for real: pyroute2 on a veth in a namespace, read back over
netlink by this test (pyroute2 again, but from outside the daemon)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from appliance_proc import APPLIANCED, Appliance, config_text, in_netns, run_quiet
from pyroute2 import IPRoute
from testbed import Testbed

pytestmark = [pytest.mark.netns, pytest.mark.e2e]


@pytest.fixture
def narrow_bed() -> Iterator[Testbed]:
    """A bed whose veths have the usual 1500-byte MTU, too small for GWLB's 8568."""
    with Testbed(appliances=1, mtu=1500) as tb:
        yield tb


def mtu(ns: str, name: str) -> int:
    with in_netns(ns), IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        return int(ipr.get_links(index)[0].get_attr("IFLA_MTU"))


def rp_filter(tb: Testbed, ns: str, name: str) -> int:
    return int(tb.read(ns, f"/proc/sys/net/ipv4/conf/{name}/rp_filter"))


def test_check_reports_and_changes_nothing(narrow_bed: Testbed, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_text(tmp_path / "run", manage="true", rp_filter="1"))
    ns = narrow_bed.ns_app(1)
    before = rp_filter(narrow_bed, ns, "eth0")
    done = run_quiet(["ip", "netns", "exec", ns, APPLIANCED, "--config", str(config), "--check"])
    assert done.returncode == 0, done.stderr
    assert "data-plane interface eth0" in done.stdout
    assert "eth0: MTU 1500 is below 8568: would set 9001" in done.stdout
    assert mtu(ns, "eth0") == 1500 and rp_filter(narrow_bed, ns, "eth0") == before
    assert not (tmp_path / "run").exists()  # --check starts nothing


def with_flowlog(text: str, path: Path) -> str:
    flowlog = text.index("[flowlog]")
    head, tail = text[:flowlog], text[flowlog:]
    tail = tail.replace("enabled = false", "enabled = true", 1)
    return head + tail.replace('"/var/log/gwlb-appliance/flows.log"', f'"{path}"', 1)


def test_startup_raises_the_mtu_and_sets_rp_filter(narrow_bed: Testbed, tmp_path: Path) -> None:
    ns = narrow_bed.ns_app(1)
    runtime = tmp_path / "run-app1"
    text = config_text(runtime, manage="true", rp_filter="1", mtu="9001")
    text = with_flowlog(text, tmp_path / "flows.log")
    qlen = "/proc/sys/net/unix/max_dgram_qlen"
    assert int(narrow_bed.read(ns, qlen)) == 10  # the kernel's default in a new namespace
    appliance = Appliance(narrow_bed, 1, tmp_path, config=text)
    assert mtu(ns, "eth0") == 9001
    assert rp_filter(narrow_bed, ns, "eth0") == 1
    assert int(narrow_bed.read(ns, qlen)) == 512  # before the flow-record socket was made
    log = appliance.stderr()
    assert "interface setup: eth0: MTU 1500 -> 9001" in log
    assert "interface setup: net.unix.max_dgram_qlen = 10 -> 512" in log
    assert appliance.stop() == 0
    # A second start finds everything right and changes nothing (idempotent).
    again_dir = tmp_path / "again"
    again_dir.mkdir()
    text = config_text(again_dir / "run-app1", manage="true", rp_filter="1", mtu="9001")
    again = Appliance(narrow_bed, 1, again_dir, config=text)
    assert "eth0: MTU 9001 carries 8568-byte datagrams: unchanged" in again.stderr()
    assert "rp_filter = 1: unchanged" in again.stderr()
    assert again.stop() == 0


def test_a_missing_interface_is_a_clear_boot_error(narrow_bed: Testbed, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    text = config_text(tmp_path / "run", manage="true").replace('# name = "ens5"', 'name = "nope0"')
    config.write_text(text)
    ns = narrow_bed.ns_app(1)
    for extra in ([], ["--check"]):
        done = run_quiet(["ip", "netns", "exec", ns, APPLIANCED, "--config", str(config), *extra])
        assert done.returncode == 3
        assert "interface nope0: no such interface" in done.stderr
        assert "Traceback" not in done.stderr
