"""Flow records for real: applianced with [flowlog] on, the demo's UDP lines and a rejected
connection through the emulated GWLB; every record holds to the published JSON schema, and the
record of the demo's flow counts exactly the packets and bytes b sent and a answered."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from appliance_proc import with_rules
from demo import LINES, LISTEN_PORT, SENDER_PORT, udp_demo
from firewall_scene import REJECTED_TCP, RULES, tcp_connect
from testbed import EmulatorHandle, Testbed

pytestmark = [pytest.mark.netns, pytest.mark.e2e]
SCHEMA = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "flow-record.schema.json"


def test_flow_records_say_what_was_decided_and_count_what_went_through(
    testbed: Testbed, tmp_path: Path, start_emulator: Callable[..., EmulatorHandle]
) -> None:
    log = tmp_path / "logs" / "flows.log"
    edits = {
        "[flowlog]\n": "[flowlog]\nenabled = true\n",
        "\nenabled = false\n": "\n",  # the shipped one's, now set above
        'path = "/var/log/gwlb-appliance/flows.log"': f'path = "{log}"',
    }
    appliance, _ = with_rules(testbed, tmp_path, RULES, edits)
    emulator = start_emulator(testbed)
    udp_demo(testbed, 4)  # three lines from b: one dropped (drop me), one rewritten
    refused = tcp_connect(testbed, 4, REJECTED_TCP)
    emulator.finish()
    assert appliance.stop() == 0  # the workers send the records of their live flows, then stop
    assert not refused.ok
    records = [json.loads(line) for line in log.read_text().splitlines()]
    schema = json.loads(SCHEMA.read_text())
    for record in records:
        jsonschema.validate(record, schema)
    (demo,) = [r for r in records if (r["src_port"], r["dst_port"]) == (SENDER_PORT, LISTEN_PORT)]
    assert (demo["event"], demo["reason"], demo["verdict"]) == ("end", "shutdown", "pass")
    assert demo["packets_out"] == len(LINES)
    assert demo["bytes_out"] == sum(20 + 8 + len(line) for line in LINES)  # as b sent them
    assert demo["packets_in"] == 0  # nc in a never answers
    telnet = [r for r in records if r["dst_port"] == REJECTED_TCP]
    assert {r["event"] for r in telnet} == {"denied", "end"}
    assert {r["rule"] for r in telnet} == {"firewall-no-telnet"}
    counters = appliance.counters()
    assert counters["flowlog_dropped"] == 0 and counters["flowlog_records"] == len(records)
