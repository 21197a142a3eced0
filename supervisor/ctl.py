"""`appliancectl`: drive a running applianced over its control socket, as supervisorctl does.

    appliancectl [--socket PATH] [--json] COMMAND [ARGS]   one command, then exit
    appliancectl [--socket PATH] [--json]                   an interactive shell
    appliancectl --version                                  this client's version

Exit codes follow the LSB: 0 done; 1 the daemon refused the command, or a worker did not reach the
state asked for; 2 usage; 3 `status` found a worker that is not RUNNING; 4 the daemon cannot be
reached (with a sentence, never a traceback).

Why the arguments are checked here: a usage error must not need a running daemon, so every command
line (and every line of the shell, with the same parser and the same messages) is parsed completely
before the first connection.

Why the client waits: the daemon answers `start`, `stop` and `restart` as soon as it has changed
what the slot wants; the worker runs (or fails) later. Like supervisorctl we report the outcome, so
the client reads `status` before the verb and polls it after, until each slot has a new worker in
RUNNING (or is STOPPED), has failed anew (BACKOFF, FATAL, EXITED), or the time is up. The daemon
stays as it is, and the client works with any daemon of this protocol.
"""

from __future__ import annotations

import cmd
import contextlib
import errno
import shlex
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supervisor.ctlargs import (
    COMMANDS,
    EXIT_FAILED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    FAILED_STATES,
    MAIN_USAGE,
    POLL_INTERVAL_S,
    SLOT_VERBS,
    TIMEOUT_S,
    Defaults,
    HelpRequested,
    Invocation,
    UsageError,
    Worker,
    client_version,
    help_text,
    parse,
)
from supervisor.ctlcapture import run_capture
from supervisor.ctlrender import compact, pretty, render, strip
from supervisor.protocol import PROTOCOL_VERSION, ProtocolError, recv_message, send_message

# --- talking to the daemon -------------------------------------------------------------------


class Unreachable(Exception):
    """The daemon cannot be reached; the message is a sentence for the operator."""


class Refused(Exception):
    """The daemon answered, and refused; the message is its reason."""


class Client:
    """One connection per request, as the daemon serves them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, command: str, args: Sequence[str] = ()) -> dict[str, Any]:
        sock, reply = self.open(command, args)
        sock.close()
        return reply

    def open(self, command: str, args: Sequence[str]) -> tuple[socket.socket, dict[str, Any]]:
        """The connection (still open, for a follower) and the daemon's accepting reply."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT_S)
        try:
            reply = self._exchange(sock, {"v": PROTOCOL_VERSION, "cmd": command, "args": [*args]})
        except BaseException:
            sock.close()
            raise
        if not reply.get("ok"):
            sock.close()
            raise Refused(str(reply.get("error") or "refused, without a reason"))
        return sock, reply

    def _exchange(self, sock: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
        path = self.path
        try:
            sock.connect(str(path))
            send_message(sock, request)
            reply = recv_message(sock)
        except FileNotFoundError:
            raise Unreachable(f"applianced is not running: no control socket at {path}.") from None
        except ConnectionRefusedError:
            raise Unreachable(
                f"applianced is not running: nothing answers at {path} (a stale socket file)."
            ) from None
        except PermissionError:
            raise Unreachable(
                f"permission denied on {path}: run as root or as a member of the "
                "control socket's group."
            ) from None
        except (OSError, ProtocolError) as error:
            reason = errno.errorcode.get(getattr(error, "errno", 0) or 0, str(error))
            raise Unreachable(f"applianced at {path} did not answer properly ({reason}).") from None
        if reply is None:
            raise Unreachable(
                f"applianced at {path} closed the connection without answering: it may have "
                "stopped; see its log (journalctl -u gwlb-appliance)."
            )
        if reply.get("v") != PROTOCOL_VERSION:
            version = reply.get("v")
            raise Unreachable(
                f"applianced at {path} speaks protocol {version!r}, this "
                f"appliancectl speaks {PROTOCOL_VERSION}: upgrade one of them."
            )
        return reply


# --- running a command -----------------------------------------------------------------------


def execute(invocation: Invocation) -> int:
    """Run a parsed command line; every outcome is a sentence and an exit code."""
    name = invocation.command
    try:
        if invocation.show_version:
            return _print_client_version(invocation.as_json)
        if name == "help":
            print(help_text(invocation.topic))
            return EXIT_OK
        assert name is not None
        client = Client(invocation.socket)
        if name in SLOT_VERBS:
            return run_slot_verb(client, invocation)
        if name == "tail":
            return run_tail(client, invocation)
        if name == "capture":
            return run_capture(client, invocation)
        if name == "flows":
            reply = client.call(name, [invocation.target or "all", *invocation.filters])
            print(pretty(strip(reply)) if invocation.as_json else render(name, reply))
            return EXIT_OK
        reply = client.call(name)
        print(pretty(strip(reply)) if invocation.as_json else render(name, reply))
        return exit_code(name, reply)
    except Refused as error:
        print(f"appliancectl: {name}: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except Unreachable as error:
        print(f"appliancectl: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE


def exit_code(command: str, reply: dict[str, Any]) -> int:
    if command == "status" and any(w["state"] != "RUNNING" for w in reply["workers"]):
        return EXIT_NOT_RUNNING
    if command == "reload" and not reply["reload"]["ok"]:
        return EXIT_REFUSED
    return EXIT_OK


def _print_client_version(as_json: bool) -> int:
    version = client_version()
    if as_json:
        print(pretty({"version": version, "protocol": PROTOCOL_VERSION}))
    else:
        print(f"appliancectl {version}, protocol {PROTOCOL_VERSION}")
    return EXIT_OK


def run_tail(client: Client, invocation: Invocation) -> int:
    wire = [] if invocation.count is None else [str(invocation.count)]
    sock, reply = client.open("tail", wire + (["follow"] if invocation.follow else []))
    with contextlib.closing(sock):
        lines = [str(line) for line in reply.get("lines", [])]
        if invocation.as_json and not invocation.follow:
            print(pretty(strip(reply)))
            return EXIT_OK
        for line in lines:
            print(compact({"line": line}) if invocation.as_json else line, flush=True)
        if invocation.follow:
            for line in _follow(sock):
                print(compact({"line": line}) if invocation.as_json else line, flush=True)
    return EXIT_OK


def _follow(sock: socket.socket) -> Iterator[str]:
    """The log lines the daemon pushes, until it closes the stream or the operator interrupts."""
    sock.settimeout(None)
    try:
        while (message := recv_message(sock)) is not None:
            yield str(message.get("line", ""))
    except KeyboardInterrupt:
        return
    except (OSError, ProtocolError) as error:
        raise Unreachable(f"the daemon's log stream broke off ({error}).") from None


# --- start, stop, restart: the verb, then its outcome ----------------------------------------


@dataclass(frozen=True)
class Outcome:
    slot: int
    ok: bool
    detail: str  # what follows "worker K: ", as supervisorctl puts it
    state: str | None
    pid: int | None


def run_slot_verb(client: Client, invocation: Invocation) -> int:
    verb, target = invocation.command, invocation.target
    assert verb is not None and target is not None
    if not invocation.wait:
        reply = client.call(verb, [target])
        if invocation.as_json:
            print(pretty(strip(reply)))
        else:
            for k in reply.get("slots", []):
                print(f"worker {k}: {verb} requested, not waiting")
        return EXIT_OK
    before = _workers(client.call("status"))
    slots = [int(k) for k in client.call(verb, [target]).get("slots", [])]
    outcomes = wait_for(client, verb, before, slots, invocation.timeout_s)
    if invocation.as_json:
        print(pretty({"slots": slots, "results": [asdict(o) for o in outcomes]}))
    else:
        for outcome in outcomes:
            print(f"worker {outcome.slot}: {outcome.detail}")
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_FAILED


def wait_for(
    client: Client, verb: str, before: dict[int, Worker], slots: list[int], timeout_s: float
) -> list[Outcome]:
    """Poll `status` until every slot in `slots` has an outcome, or `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    settled = {k: o for k in slots if (o := settled_before(verb, k, before.get(k, {})))}
    while len(settled) < len(slots):
        now = _workers(client.call("status"))
        for k in slots:
            if k not in settled and (o := judge(verb, k, before.get(k, {}), now.get(k, {}))):
                settled[k] = o
        left_s = deadline - time.monotonic()
        if len(settled) == len(slots):
            break
        if left_s <= 0:
            for k in slots:
                if k not in settled:
                    settled[k] = timed_out(k, now.get(k, {}), timeout_s)
            break
        time.sleep(min(POLL_INTERVAL_S, left_s))  # the daemon has no event to wait on
    return [settled[k] for k in slots]


def settled_before(verb: str, slot: int, was: Worker) -> Outcome | None:
    """What needs no waiting, in supervisorctl's words (and, like it, not a failure)."""
    if verb == "start" and was.get("state") == "RUNNING":
        return Outcome(slot, True, "ERROR (already started)", "RUNNING", was.get("pid"))
    if verb == "stop" and was.get("state") == "STOPPED":
        return Outcome(slot, True, "ERROR (not running)", "STOPPED", None)
    return None


def judge(verb: str, slot: int, was: Worker, now: Worker) -> Outcome | None:
    """The slot's outcome, given its entry before the verb and now; None: not yet."""
    state, pid = now.get("state"), now.get("pid")
    if verb == "stop":
        return Outcome(slot, True, "stopped", state, pid) if state == "STOPPED" else None
    # A worker started since `was`: a new pid, or (should a pid come round again) a new spawn.
    new_worker = (pid, now.get("restarts")) != (was.get("pid"), was.get("restarts"))
    if state == "RUNNING" and (verb == "start" or new_worker):
        return Outcome(slot, True, f"{SLOT_VERBS[verb]}, pid {pid}", state, pid)
    if state in FAILED_STATES and (new_worker or state != was.get("state")):
        reason = f"{state}: {now['last_exit']}" if now.get("last_exit") else state
        return Outcome(slot, False, f"ERROR ({reason})", state, pid)
    return None


def timed_out(slot: int, now: Worker, timeout_s: float) -> Outcome:
    state = now.get("state") or "not in status"
    return Outcome(
        slot, False, f"ERROR (timed out after {timeout_s:g} s, {state})", now.get("state"), None
    )


def _workers(reply: dict[str, Any]) -> dict[int, Worker]:
    return {int(w["slot"]): w for w in reply.get("workers", [])}


# --- the shell -------------------------------------------------------------------------------


def run_line(words: Sequence[str], defaults: Defaults, in_shell: bool) -> Invocation | int:
    """Parse one command line: the invocation, or the exit code of what was shown instead."""
    try:
        invocation = parse(words, defaults)
    except HelpRequested as shown:
        print(shown.text)
        return EXIT_OK
    except UsageError as error:
        print(error.usage, file=sys.stderr)
        print(error.message, file=sys.stderr)
        return EXIT_USAGE
    if in_shell and invocation.command is None and not invocation.show_version:
        print(MAIN_USAGE, file=sys.stderr)
        print("appliancectl: name a command; try 'help'", file=sys.stderr)
        return EXIT_USAGE
    return invocation


class Shell(cmd.Cmd):
    intro = "appliancectl shell: 'help' lists the commands, 'quit' leaves."
    prompt = "appliance> "

    def __init__(self, defaults: Defaults) -> None:
        super().__init__()
        self.defaults = defaults
        self.last = EXIT_OK

    def onecmd(self, line: str) -> bool:
        try:
            words = shlex.split(line)
        except ValueError as error:  # an unbalanced quote
            print(MAIN_USAGE, file=sys.stderr)
            print(f"appliancectl: {error}", file=sys.stderr)
            self.last = EXIT_USAGE
            return False
        if not words:
            return False
        if words[0] in ("quit", "exit", "EOF"):
            return True
        if words[0] == "?":
            words[0] = "help"
        outcome = run_line(words, self.defaults, in_shell=True)
        self.last = outcome if isinstance(outcome, int) else execute(outcome)
        return False

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return [name for name in (*COMMANDS, "quit") if name.startswith(text)]


def main(argv: Sequence[str] | None = None) -> int:
    outcome = run_line(sys.argv[1:] if argv is None else argv, Defaults(), in_shell=False)
    if isinstance(outcome, int):
        return outcome
    try:
        if outcome.command is None and not outcome.show_version:
            shell = Shell(Defaults(outcome.socket, outcome.as_json))
            shell.cmdloop()
            return shell.last
        return execute(outcome)
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
