"""`appliancectl` against a tiny control server: a real Unix socket speaking supervisor.protocol.

The server runs in a thread and answers from a script; every connection and request is recorded,
so a test can tell that a usage error never connected, and what the client asked, in which order.
"""

from __future__ import annotations

import re
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pytest

from supervisor import ctl
from supervisor.protocol import PROTOCOL_VERSION, encode, recv_message

Answer = Callable[[str, list[str]], dict[str, Any]]


class FakeDaemon:
    """Answers each connection's one request with `answer(cmd, args)`.

    A reply without "ok" is an accepting one; "_follow" (a list of lines) is pushed after the
    reply when the request asked to follow, as the daemon pushes log lines to a follower, and
    then the stream is closed.
    """

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path = path
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[str, list[str]]] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    conn, _ = self.listener.accept()
                    self.connections += 1
                    with conn:
                        self._answer_one(conn)

    def _answer_one(self, conn: socket.socket) -> None:
        request = recv_message(conn)
        assert request is not None and request["v"] == PROTOCOL_VERSION
        self.requests.append((request["cmd"], request["args"]))
        reply = dict(self.answer(request["cmd"], request["args"]))
        follow = reply.pop("_follow", []) if "follow" in request["args"] else []
        conn.sendall(encode({"v": PROTOCOL_VERSION, "ok": True, **reply}))
        for line in follow:
            conn.sendall(encode({"v": PROTOCOL_VERSION, "ok": True, "line": line}))

    def commands(self) -> list[str]:
        return [command for command, _ in self.requests]

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()


@pytest.fixture
def start_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., FakeDaemon]]:
    started: list[FakeDaemon] = []

    def start(answer: Answer) -> FakeDaemon:
        directory = tmp_path_factory.mktemp("ctl")  # short: a socket path has 107 bytes at most
        started.append(FakeDaemon(directory / "c.sock", answer))
        return started[-1]

    yield start
    for daemon in started:
        daemon.close()


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctl, "POLL_INTERVAL_S", 0.001, raising=False)


def worker(
    slot: int,
    state: str,
    pid: int | None,
    restarts: int = 0,
    last_exit: str | None = None,
    packets: int = 0,
    rx_buffer_drops: int = 0,
) -> dict[str, Any]:
    return {
        "slot": slot,
        "pid": pid,
        "cpu": slot,
        "state": state,
        "restarts": restarts,
        "uptime_s": 1.5 if pid else None,
        "heartbeat_age_s": 0.01,
        "generation": 1,
        "packets_in": packets,
        "packets_out": packets,
        "drops": 0,
        "rx_buffer_drops": rx_buffer_drops,
        "last_exit": last_exit,
    }


def status_reply(workers: list[dict[str, Any]], draining: bool = False) -> dict[str, Any]:
    return {
        "supervisor": {
            "pid": 42,
            "uptime_s": 10.0,
            "config": "/etc/gwlb-appliance/config.toml",
            "generation": 1,
            "draining": draining,
            "ready": True,
            "last_reload": {"ok": True, "detail": "initial config"},
            "stopping": False,
            "interfaces": [],
        },
        "workers": workers,
        "health": None,
    }


def scripted(*polls: list[dict[str, Any]], verb_reply: dict[str, Any] | None = None) -> Answer:
    """`status` answers with each of `polls` in turn (then the last again); other commands with
    `verb_reply` (by default: the slots of the first poll)."""
    remaining = list(polls)

    def answer(command: str, args: list[str]) -> dict[str, Any]:
        if command == "status":
            workers = remaining.pop(0) if len(remaining) > 1 else remaining[0]
            return status_reply(workers)
        if verb_reply is not None:
            return verb_reply
        targets = [w["slot"] for w in polls[0]] if args == ["all"] else [int(args[0])]
        return {"slots": targets}

    return answer


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- refusals: exit 2, a usage line, and no connection --------------------------------------

USAGE_ERRORS = [
    ["status", "extra"],
    ["stats", "extra"],
    ["tail", "-5"],
    ["tail", "abc"],
    ["tail", "5", "6"],
    ["tail", "-x"],
    ["start"],
    ["stop", "x"],
    ["stop", "-1"],
    ["restart", "0", "1"],
    ["restart", "0", "--bogus"],
    ["restart", "--timeout", "0", "0"],
    ["restart", "--timeout", "abc", "0"],
    ["restart", "--no-wait", "--timeout", "3", "0"],
    ["reload", "now"],
    ["drain", "x"],
    ["undrain", "x"],
    ["version", "x"],
    ["shutdown", "now"],
    ["help", "bogus"],
    ["help", "status", "extra"],
    ["bogus"],
    ["--bogus", "status"],
    ["--no-wait", "restart", "0"],
    ["--json", "--version", "status"],
    ["status", "--version"],
    ["--socket"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=" ".join)
def test_a_usage_error_exits_2_with_a_usage_line_before_connecting(
    argv: list[str], start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(scripted([worker(0, "RUNNING", 100)]))
    code, out, err = run(capsys, *argv, "--socket", str(daemon.path))
    assert code == ctl.EXIT_USAGE
    assert out == ""
    first, second, *more = err.splitlines()
    assert first.startswith("usage: appliancectl") and second.startswith("appliancectl")
    assert not more and "Traceback" not in err
    assert daemon.connections == 0


def test_usage_messages_say_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    expected = {
        ("tail", "-5"): "appliancectl tail: argument N: a number of lines, 0 or more, not '-5'",
        ("stats", "extra"): "appliancectl stats: unexpected argument 'extra'",
        ("bogus",): "appliancectl: unknown command 'bogus'; try 'help'",
        ("restart",): "appliancectl restart: the following arguments are required: SLOT|all",
    }
    for argv, message in expected.items():
        assert run(capsys, *argv)[2].splitlines()[1] == message


def test_a_usage_error_needs_no_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--socket", str(tmp_path / "none.sock"), "tail", "abc")
    assert code == ctl.EXIT_USAGE and "not running" not in err


# --- options before or after the command ----------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["--json", "status"], ["status", "--json"]], ids=["before", "after"]
)
def test_json_works_before_or_after_the_command(
    argv: list[str], start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(scripted([worker(0, "RUNNING", 100), worker(1, "STOPPED", None)]))
    code, out, _ = run(capsys, "--socket", str(daemon.path), *argv)
    assert code == ctl.EXIT_NOT_RUNNING  # LSB: a worker is not RUNNING, in JSON too
    reply = orjson.loads(out)
    assert [w["state"] for w in reply["workers"]] == ["RUNNING", "STOPPED"]
    assert "ok" not in reply and "v" not in reply


def test_socket_works_after_the_command(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(lambda command, args: {"draining": True})
    code, _, _ = run(capsys, "drain", "--socket", str(daemon.path))
    assert code == 0 and daemon.requests == [("drain", [])]


# --- tail ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "wire"),
    [
        (["tail"], []),
        (["tail", "5"], ["5"]),
        (["tail", "0", "-f"], ["0", "follow"]),
        (["tail", "-f", "7"], ["7", "follow"]),
        (["tail", "--follow"], ["follow"]),
    ],
)
def test_tail_sends_the_count_it_was_given(
    argv: list[str],
    wire: list[str],
    start_daemon: Callable[..., FakeDaemon],
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon = start_daemon(lambda command, args: {"lines": ["one", "two"], "_follow": ["three"]})
    code, out, _ = run(capsys, "--socket", str(daemon.path), *argv)
    assert code == 0 and daemon.requests == [("tail", wire)]
    assert out.splitlines() == (["one", "two", "three"] if "follow" in wire else ["one", "two"])


def test_json_tail_follow_streams_one_json_object_per_line(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(lambda command, args: {"lines": ["a", "b"], "_follow": ["c", "d"]})
    code, out, _ = run(capsys, "--socket", str(daemon.path), "--json", "tail", "-f")
    assert code == 0
    assert [orjson.loads(line) for line in out.splitlines()] == [
        {"line": "a"},
        {"line": "b"},
        {"line": "c"},
        {"line": "d"},
    ]


def test_json_tail_without_follow_is_one_document(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(lambda command, args: {"lines": ["a", "b"], "follow": False})
    code, out, _ = run(capsys, "--socket", str(daemon.path), "tail", "2", "--json")
    assert code == 0 and orjson.loads(out) == {"lines": ["a", "b"]}


# --- help and versions -----------------------------------------------------------------------


def test_help_lists_every_command_without_a_daemon(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(scripted([]))
    for argv in (["help"], ["-h"], ["--help"]):
        code, out, err = run(capsys, "--socket", str(daemon.path), *argv)
        assert code == 0 and err == ""
        for name in ctl.COMMANDS:
            assert re.search(rf"^  {name}\b", out, re.M), name
    code, out, _ = run(capsys, "help", "restart")
    assert code == 0
    assert out.startswith("usage: appliancectl restart [--no-wait] [--timeout S] SLOT|all")
    assert "--timeout S" in out and "--no-wait" in out
    assert run(capsys, "restart", "-h")[1] == out
    assert daemon.connections == 0


def test_version_flag_is_the_clients_and_asks_no_daemon(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(lambda command, args: {"version": "9.9.9", "protocol": 1})
    mine = metadata.version("gwlb-appliance")
    code, out, _ = run(capsys, "--socket", str(daemon.path), "--version")
    assert code == 0 and out == f"appliancectl {mine}, protocol {PROTOCOL_VERSION}\n"
    code, out, _ = run(capsys, "--json", "--socket", str(daemon.path), "--version")
    assert orjson.loads(out) == {"version": mine, "protocol": PROTOCOL_VERSION}
    assert daemon.connections == 0
    code, out, _ = run(capsys, "--socket", str(daemon.path), "version")
    assert code == 0 and out == "applianced 9.9.9, protocol 1\n"
    assert daemon.requests == [("version", [])]


# --- the shell: the same parser, the same messages -------------------------------------------


def shell_line(
    capsys: pytest.CaptureFixture[str], path: Path, line: str, as_json: bool = False
) -> tuple[int, str, str]:
    shell = ctl.Shell(ctl.Defaults(path, as_json))
    assert shell.onecmd(line) is False
    out, err = capsys.readouterr()
    return shell.last, out, err


@pytest.mark.parametrize(
    "line", ["tail -5", "stats extra", "restart", "bogus", "help bogus", "--version status"]
)
def test_the_shell_refuses_what_the_command_line_refuses_in_the_same_words(
    line: str, start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(scripted([worker(0, "RUNNING", 100)]))
    in_shell = shell_line(capsys, daemon.path, line)
    one_shot = run(capsys, "--socket", str(daemon.path), *line.split())
    assert in_shell == one_shot and in_shell[0] == ctl.EXIT_USAGE
    assert daemon.connections == 0


def test_the_shell_has_help_json_and_version(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(scripted([worker(0, "RUNNING", 100)]))
    assert shell_line(capsys, daemon.path, "help") == run(capsys, "help")
    assert shell_line(capsys, daemon.path, "help tail") == run(capsys, "help", "tail")
    assert shell_line(capsys, daemon.path, "? tail") == run(capsys, "help", "tail")
    assert shell_line(capsys, daemon.path, "--version") == run(capsys, "--version")
    assert daemon.connections == 0
    code, out, _ = shell_line(capsys, daemon.path, "status --json")
    assert code == 0 and orjson.loads(out)["workers"][0]["pid"] == 100
    code, out, _ = shell_line(capsys, daemon.path, "status", as_json=True)  # appliancectl --json
    assert code == 0 and orjson.loads(out)["workers"][0]["pid"] == 100
    code, out, _ = shell_line(capsys, daemon.path, "--json")
    assert code == ctl.EXIT_USAGE


# --- start, stop, restart wait for the outcome -----------------------------------------------


def test_restart_returns_once_the_new_worker_runs(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(
        scripted(
            [worker(0, "RUNNING", 100)],  # read before the verb
            [worker(0, "STOPPING", 100)],
            [worker(0, "STOPPED", None)],
            [worker(0, "STARTING", 101, restarts=1)],
            [worker(0, "RUNNING", 101, restarts=1)],
            [worker(0, "EXITED", None, restarts=1)],  # never read: the client has its answer
        )
    )
    code, out, err = run(capsys, "--socket", str(daemon.path), "restart", "0")
    assert (code, out, err) == (0, "worker 0: restarted, pid 101\n", "")
    assert daemon.requests[:2] == [("status", []), ("restart", ["0"])]
    assert daemon.commands()[2:] == ["status"] * 4


def test_restart_all_reports_each_slot_and_a_fatal_one_fails(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(
        scripted(
            [worker(0, "RUNNING", 100), worker(1, "RUNNING", 200)],
            [worker(0, "STARTING", 101, 1), worker(1, "STARTING", 201, 1)],
            [worker(0, "RUNNING", 101, 1), worker(1, "BACKOFF", None, 1, "exited with status 3")],
            [worker(0, "RUNNING", 101, 1), worker(1, "FATAL", None, 1, "exited with status 3")],
        )
    )
    code, out, _ = run(capsys, "--socket", str(daemon.path), "restart", "all")
    assert code == ctl.EXIT_FAILED
    assert out.splitlines() == [
        "worker 0: restarted, pid 101",
        "worker 1: ERROR (BACKOFF: exited with status 3)",
    ]
    assert daemon.requests[1] == ("restart", ["all"])


def test_a_restart_that_ends_fatal_says_why(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(
        scripted(
            [worker(1, "RUNNING", 200)],
            [worker(1, "STOPPING", 200)],
            [worker(1, "FATAL", None, 1, "exited with status 3")],
        )
    )
    code, out, _ = run(capsys, "--socket", str(daemon.path), "--json", "restart", "1")
    assert code == ctl.EXIT_FAILED
    assert orjson.loads(out) == {
        "slots": [1],
        "results": [
            {
                "slot": 1,
                "ok": False,
                "detail": "ERROR (FATAL: exited with status 3)",
                "state": "FATAL",
                "pid": None,
            }
        ],
    }


def test_a_restart_that_never_gets_there_times_out(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(scripted([worker(0, "RUNNING", 100)], [worker(0, "STOPPING", 100)]))
    code, out, _ = run(capsys, "--socket", str(daemon.path), "restart", "0", "--timeout", "0.2")
    assert code == ctl.EXIT_FAILED
    assert out == "worker 0: ERROR (timed out after 0.2 s, STOPPING)\n"
    assert daemon.commands().count("status") >= 3  # it did poll meanwhile


def test_start_waits_for_running_and_a_stale_failure_is_not_its_outcome(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    backoff = worker(1, "BACKOFF", None, 3, "exited with status 1")
    daemon = start_daemon(
        scripted(
            [worker(0, "RUNNING", 100), backoff],
            [worker(0, "RUNNING", 100), backoff],  # the failure from before the verb
            [worker(0, "RUNNING", 100), worker(1, "STARTING", 300, 4)],
            [worker(0, "RUNNING", 100), worker(1, "RUNNING", 300, 4)],
        )
    )
    code, out, _ = run(capsys, "--socket", str(daemon.path), "start", "all")
    assert code == 0
    assert out.splitlines() == ["worker 0: ERROR (already started)", "worker 1: started, pid 300"]


def test_stop_waits_for_stopped(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(
        scripted(
            [worker(0, "RUNNING", 100)],
            [worker(0, "STOPPING", 100)],
            [worker(0, "STOPPING", 100)],
            [worker(0, "STOPPED", None, last_exit="exited with status 0")],
        )
    )
    code, out, _ = run(capsys, "--socket", str(daemon.path), "stop", "0")
    assert (code, out) == (0, "worker 0: stopped\n")
    assert daemon.commands() == ["status", "stop", "status", "status", "status"]


def test_stop_of_a_stopped_worker_says_so_like_supervisorctl(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(scripted([worker(0, "STOPPED", None)]))
    code, out, _ = run(capsys, "--socket", str(daemon.path), "stop", "0")
    assert (code, out) == (0, "worker 0: ERROR (not running)\n")
    assert daemon.commands() == ["status", "stop"]


def test_no_wait_only_sends_the_verb(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(scripted([worker(0, "RUNNING", 100)]))
    code, out, _ = run(capsys, "--socket", str(daemon.path), "restart", "--no-wait", "0")
    assert (code, out) == (0, "worker 0: restart requested, not waiting\n")
    assert daemon.requests == [("restart", ["0"])]


def test_a_refused_verb_exits_1_with_the_daemons_reason(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = {"ok": False, "error": "name a slot from 0 to 1, or all"}
    daemon = start_daemon(scripted([worker(0, "RUNNING", 100)], verb_reply=refusal))
    code, out, err = run(capsys, "--socket", str(daemon.path), "restart", "7")
    assert code == ctl.EXIT_REFUSED and out == ""
    assert err == "appliancectl: restart: name a slot from 0 to 1, or all\n"
    assert daemon.commands() == ["status", "restart"]


# --- rendering -------------------------------------------------------------------------------


def columns_line_up(lines: list[str], header: str, names: list[str]) -> None:
    """Each right-aligned column ends where its name ends in the header."""
    ends = [header.index(name) + len(name) for name in names]
    for line in lines:
        assert len(line) == ends[-1], line
        for end in ends:
            assert line[end - 1] != " " and (end == len(line) or line[end] == " "), line


def test_stats_columns_line_up_whatever_the_names_and_values(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    one = {
        "received": 12_345_678_901_234,
        "sent": 7,
        "malformed_by_reason": {"geneve_option_length_past_the_end": 3},
        "dropped_by_rule": {"a-rule-whose-name-is-much-longer-than-the-column": 99},
        "send_errors_by_errno": {},
    }
    two = {
        "received": 1,
        "sent": 2,
        "malformed_by_reason": {},
        "dropped_by_rule": {},
        "send_errors_by_errno": {"ENOBUFS": 4},
    }
    total = {
        "received": 12_345_678_901_235,
        "sent": 9,
        "malformed_by_reason": {"geneve_option_length_past_the_end": 3},
        "dropped_by_rule": {"a-rule-whose-name-is-much-longer-than-the-column": 99},
        "send_errors_by_errno": {"ENOBUFS": 4},
    }
    daemon = start_daemon(lambda command, args: {"workers": [one, two], "total": total})
    code, out, _ = run(capsys, "--socket", str(daemon.path), "stats")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.startswith("counter ")
    columns_line_up(lines, header, ["worker 0", "worker 1", "total"])
    assert "dropped[a-rule-whose-name-is-much-longer-than-the-column]" in out
    assert "malformed[geneve_option_length_past_the_end]" in out
    send_errors = next(line for line in lines if line.startswith("send_errors[ENOBUFS]"))
    assert send_errors.split()[1:] == ["0", "4", "4"]


def test_status_columns_line_up_with_big_numbers(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    workers = [
        worker(0, "RUNNING", 4_194_303, packets=123_456_789_012_345),
        worker(1, "FATAL", None, rx_buffer_drops=98_765_432_109_876),
    ]
    daemon = start_daemon(scripted(workers))
    code, out, _ = run(capsys, "--socket", str(daemon.path), "status")
    assert code == ctl.EXIT_NOT_RUNNING
    header = next(line for line in out.splitlines() if line.lstrip().startswith("SLOT"))
    rows = [line for line in out.splitlines() if re.match(r"\s*\d+\s", line)]
    assert len(rows) == 2
    columns_line_up(rows, header, ["SLOT", "PID", "CPU", "DROPS", "RCVBUF_DROPS"])


def test_drain_says_yes_as_status_does(
    start_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    draining = {"value": False}

    def answer(command: str, args: list[str]) -> dict[str, Any]:
        if command == "status":
            return status_reply([worker(0, "RUNNING", 100)], draining=draining["value"])
        draining["value"] = command == "drain"
        return {"draining": draining["value"]}

    daemon = start_daemon(answer)
    path = str(daemon.path)
    code, out, _ = run(capsys, "--socket", path, "drain")
    assert code == 0 and out.startswith("draining: yes") and "503" in out
    assert "draining: yes" in run(capsys, "--socket", path, "status")[1]
    code, out, _ = run(capsys, "--socket", path, "undrain")
    assert code == 0 and out.startswith("draining: no")
    assert "draining: no" in run(capsys, "--socket", path, "status")[1]
    assert orjson.loads(run(capsys, "--socket", path, "--json", "drain")[1]) == {"draining": True}


def test_an_absent_daemon_is_a_sentence_and_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--socket", str(tmp_path / "none.sock"), "restart", "0")
    assert code == ctl.EXIT_UNREACHABLE and out == ""
    assert err.startswith("appliancectl: applianced is not running") and "Traceback" not in err
