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

import argparse
import cmd
import contextlib
import errno
import math
import shlex
import socket
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import orjson

from config.runtimedir import default_runtime_dir
from supervisor.protocol import PROTOCOL_VERSION, ProtocolError, recv_message, send_message

# The daemon's default, found the same way (per network namespace): config/runtimedir.py
DEFAULT_SOCKET = default_runtime_dir() / "control.sock"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_FAILED = EXIT_REFUSED  # a worker that did not get where it was sent: LSB "generic error"
TIMEOUT_S = 5.0  # one request and its reply
WAIT_TIMEOUT_S = 30.0  # start/stop/restart: how long to wait for the outcome, by default
POLL_INTERVAL_S = 0.1  # start/stop/restart: how often to read `status` while waiting
DISTRIBUTION = "gwlb-appliance"
FAILED_STATES = frozenset({"BACKOFF", "FATAL", "EXITED"})
MAIN_USAGE = "usage: appliancectl [--socket PATH] [--json] [--version] [COMMAND [ARGS]]"

Worker = dict[str, Any]  # one entry of the `status` reply's "workers"


@dataclass(frozen=True)
class Command:
    arguments: str  # what follows the command's name in its usage line
    summary: str


COMMANDS: dict[str, Command] = {
    "status": Command(
        "", "the workers: slot, pid, CPU, state, uptime, restarts, packets in/out, drops"
    ),
    "stats": Command("", "every counter, per worker and in total"),
    "start": Command("[--no-wait] [--timeout S] SLOT|all", "start a worker and wait until it runs"),
    "stop": Command(
        "[--no-wait] [--timeout S] SLOT|all",
        "stop a worker and wait until it has stopped (its socket stays bound; its flows wait)",
    ),
    "restart": Command(
        "[--no-wait] [--timeout S] SLOT|all", "restart a worker and wait until the new one runs"
    ),
    "reload": Command("", "validate the config file again and apply its policy (like SIGHUP)"),
    "drain": Command("", "health answers 503 on purpose: GWLB sends no new flows"),
    "undrain": Command("", "health reports the facts again"),
    "tail": Command(
        "[N] [-f]",
        "the daemon's last N log lines (default 50); -f follows them "
        "(with --json: one JSON object per line)",
    ),
    "version": Command("", "the daemon's version and protocol (--version: this client's)"),
    "shutdown": Command("", "stop the workers gracefully and exit"),
    "help": Command("[COMMAND]", "this list, or one command's details"),
}
SLOT_VERBS = {"start": "started", "stop": "stopped", "restart": "restarted"}
COMMAND_OPTIONS = frozenset({"--no-wait", "--timeout", "-f", "--follow"})
COMMON_NOTE = "--json and --socket PATH work before or after the command."
HELP_WIDTH, HELP_INDENT = 79, 20


# --- the command line ------------------------------------------------------------------------


class UsageError(Exception):
    """A command line this client refuses: the usage line to show, and why."""

    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage
        self.message = message


class HelpRequested(Exception):
    """-h or --help: show `text` and succeed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Defaults:
    """What a command line starts from: the shell passes on its own options."""

    socket: Path = DEFAULT_SOCKET
    as_json: bool = False


@dataclass(frozen=True)
class Invocation:
    command: str | None  # None: no command (the shell, or --version)
    socket: Path
    as_json: bool = False
    show_version: bool = False
    target: str | None = None  # start/stop/restart: a slot number or "all"
    wait: bool = True
    timeout_s: float = WAIT_TIMEOUT_S
    count: int | None = None  # tail N; None: the daemon's default
    follow: bool = False
    topic: str | None = None  # help COMMAND


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing and exiting, so the shell can carry on."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.format_usage().strip(), f"{self.prog}: {message}")


class _Help(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        raise HelpRequested(parser.format_help().rstrip())


def _slot(text: str) -> str:
    if text == "all" or (text.isascii() and text.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"a slot number (0, 1, ...) or all, not {text!r}")


def _count(text: str) -> int:
    if text.isascii() and text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"a number of lines, 0 or more, not {text!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"a number of seconds above 0, not {text!r}")
    return value


def _command_parser(name: str) -> _Parser:
    spec = COMMANDS[name]
    parser = _Parser(
        prog=f"appliancectl {name}",
        usage=f"appliancectl {name} {spec.arguments}".rstrip(),
        description=spec.summary,
        epilog=COMMON_NOTE,
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("-h", "--help", action=_Help, help="this help")
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser.add_argument("--socket", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    if name in SLOT_VERBS:
        parser.add_argument("target", metavar="SLOT|all", type=_slot, help="a slot, or all")
        parser.add_argument(
            "--no-wait", action="store_true", help="return once the daemon has the request"
        )
        parser.add_argument(
            "--timeout",
            metavar="S",
            type=_seconds,
            help=f"give up waiting after S seconds (default {WAIT_TIMEOUT_S:g})",
        )
    elif name == "tail":
        parser.add_argument("count", metavar="N", nargs="?", type=_count, help="lines (default 50)")
        parser.add_argument(
            "-f", "--follow", action="store_true", help="then follow the log until interrupted"
        )
    elif name == "help":
        parser.add_argument("topic", metavar="COMMAND", nargs="?", help="one command")
    return parser


PARSERS = {name: _command_parser(name) for name in COMMANDS}


def _main_usage(message: str) -> UsageError:
    return UsageError(MAIN_USAGE, f"appliancectl: {message}")


def parse(words: Sequence[str], defaults: Defaults = Defaults()) -> Invocation:
    """The invocation a command line asks for; UsageError or HelpRequested otherwise."""
    socket_path, as_json, show_version = defaults.socket, defaults.as_json, False
    rest = list(words)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        option = rest.pop(0)
        if option == "--json":
            as_json = True
        elif option == "--version":
            show_version = True
        elif option in ("-h", "--help"):
            raise HelpRequested(help_text(None))
        elif option == "--socket" or option.startswith("--socket="):
            value = option.partition("=")[2] if "=" in option else (rest.pop(0) if rest else "")
            if not value:
                raise _main_usage("--socket needs a PATH")
            socket_path = Path(value)
        elif option.partition("=")[0] in COMMAND_OPTIONS:
            raise _main_usage(f"{option} belongs after the command it modifies")
        else:
            raise _main_usage(f"unknown option {option!r}")
    if show_version and rest:
        raise _main_usage("--version takes no command")
    if not rest:
        return Invocation(None, socket_path, as_json, show_version=show_version)
    name, args = rest[0], rest[1:]
    if name not in COMMANDS:
        raise _main_usage(f"unknown command {name!r}; try 'help'")
    parser = PARSERS[name]
    options, extra = parser.parse_known_args(args)
    if extra:
        parser.error(f"unexpected argument {extra[0]!r}")
    given = vars(options)
    if given.get("no_wait") and given.get("timeout") is not None:
        parser.error("--timeout means nothing with --no-wait")
    if name == "help" and given["topic"] is not None and given["topic"] not in COMMANDS:
        parser.error(f"unknown command {given['topic']!r}; try 'help'")
    return Invocation(
        name,
        given.get("socket", socket_path),
        as_json or given.get("json", False),
        target=given.get("target"),
        wait=not given.get("no_wait", False),
        timeout_s=given.get("timeout") or WAIT_TIMEOUT_S,
        count=given.get("count"),
        follow=given.get("follow", False),
        topic=given.get("topic"),
    )


def help_text(topic: str | None) -> str:
    if topic is not None:
        return PARSERS[topic].format_help().rstrip()
    lines = [
        MAIN_USAGE,
        "",
        "With a command, run it and exit; without one, start a shell that takes the same lines.",
        "",
        "options:",
        f"  --socket PATH   the control socket (default: {DEFAULT_SOCKET})",
        "  --json          machine-readable output",
        "  --version       this client's version, without asking the daemon",
        "",
        "commands ('help COMMAND' tells more):",
    ]
    for name, spec in COMMANDS.items():
        left = f"{name} {spec.arguments}".rstrip()
        summary = textwrap.wrap(spec.summary, HELP_WIDTH - HELP_INDENT)
        if len(left) + 4 > HELP_INDENT:  # too long to share a line with its summary
            lines.append(f"  {left}")
        else:
            lines.append(f"  {left:<{HELP_INDENT - 2}}{summary.pop(0)}")
        lines += [" " * HELP_INDENT + part for part in summary]
    lines += [
        "",
        COMMON_NOTE,
        "exit codes: 0 done, 1 refused or failed, 2 usage, 3 a worker is not RUNNING (status),",
        "4 the daemon cannot be reached.",
    ]
    return "\n".join(lines)


def client_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


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
        if reply is None or reply.get("v") != PROTOCOL_VERSION:
            version = None if reply is None else reply.get("v")
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
        reply = client.call(name)
        print(_pretty(_strip(reply)) if invocation.as_json else render(name, reply))
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
        print(_pretty({"version": version, "protocol": PROTOCOL_VERSION}))
    else:
        print(f"appliancectl {version}, protocol {PROTOCOL_VERSION}")
    return EXIT_OK


def run_tail(client: Client, invocation: Invocation) -> int:
    wire = [] if invocation.count is None else [str(invocation.count)]
    sock, reply = client.open("tail", wire + (["follow"] if invocation.follow else []))
    with contextlib.closing(sock):
        lines = [str(line) for line in reply.get("lines", [])]
        if invocation.as_json and not invocation.follow:
            print(_pretty(_strip(reply)))
            return EXIT_OK
        for line in lines:
            print(_compact({"line": line}) if invocation.as_json else line, flush=True)
        if invocation.follow:
            for line in _follow(sock):
                print(_compact({"line": line}) if invocation.as_json else line, flush=True)
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
            print(_pretty(_strip(reply)))
        else:
            for k in reply.get("slots", []):
                print(f"worker {k}: {verb} requested, not waiting")
        return EXIT_OK
    before = _workers(client.call("status"))
    slots = [int(k) for k in client.call(verb, [target]).get("slots", [])]
    outcomes = wait_for(client, verb, before, slots, invocation.timeout_s)
    if invocation.as_json:
        print(_pretty({"slots": slots, "results": [asdict(o) for o in outcomes]}))
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


# --- rendering -------------------------------------------------------------------------------


def _strip(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("v", "ok", "follow")}


def _pretty(value: dict[str, Any]) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _compact(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


def render(command: str, reply: dict[str, Any]) -> str:
    if command == "status":
        return render_status(reply)
    if command == "stats":
        return render_stats(reply)
    if command == "reload":
        outcome = reply["reload"]
        return ("reloaded: " if outcome["ok"] else "") + str(outcome["detail"])
    if command in ("drain", "undrain"):
        if reply.get("draining"):
            return "draining: yes (health answers 503 until undrain)"
        return "draining: no (health reports the facts again)"
    if command == "version":
        return f"applianced {reply.get('version')}, protocol {reply.get('protocol')}"
    if "detail" in reply:
        return str(reply["detail"])
    return " ".join(f"{k}: {v}" for k, v in _strip(reply).items())


def table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> list[str]:
    """Columns as wide as their widest cell; `align` has one '<' or '>' per column."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths, strict=True)).rstrip()
        for row in cells
    ]


def render_status(reply: dict[str, Any]) -> str:
    sup = reply["supervisor"]
    lines = [
        f"supervisor pid {sup['pid']}, up {sup['uptime_s']} s, config {sup['config']} "
        f"(generation {sup['generation']}), ready: {'yes' if sup['ready'] else 'no'}, "
        f"draining: {'yes' if sup['draining'] else 'no'}",
        f"last reload: {sup['last_reload']['detail']}",
        *(f"interface: {fact}" for fact in sup.get("interfaces", [])),
    ]
    header = ("SLOT", "PID", "CPU", "STATE", "UPTIME", "RESTARTS", "IN", "OUT", "DROPS")
    rows = [
        (
            w["slot"],
            w["pid"] or "-",
            w["cpu"],
            w["state"],
            "-" if w["uptime_s"] is None else f"{w['uptime_s']}s",
            w["restarts"],
            w["packets_in"],
            w["packets_out"],
            w["drops"],
        )
        for w in reply["workers"]
    ]
    lines += table(header, rows, ">>><>>>>>")
    health = reply.get("health")
    if health:
        lines.append(
            f"health service: {health['state']}, pid {health['pid'] or '-'}, "
            f"{health['bind']}, restarts {health['restarts']}"
        )
    return "\n".join(lines)


def render_stats(reply: dict[str, Any]) -> str:
    columns = [*(f"worker {k}" for k in range(len(reply["workers"]))), "total"]
    per_column = [*reply["workers"], reply["total"]]
    total = reply["total"]
    rows: list[list[object]] = [
        [name, *(column.get(name, 0) for column in per_column)]
        for name, value in total.items()
        if not isinstance(value, dict)
    ]
    for group, keys in total.items():
        if isinstance(keys, dict):
            prefix = group.split("_by_")[0]
            rows += [
                [f"{prefix}[{key}]", *(column.get(group, {}).get(key, 0) for column in per_column)]
                for key in keys
            ]
    return "\n".join(table(["counter", *columns], rows, "<" + ">" * len(columns)))


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
