"""appliancectl's command line: the commands, their arguments and usage lines, and the parse
that checks a whole line before anything is sent (a usage error never needs a running daemon).
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from appliance.capturefilter import FilterError, compile_filter
from config.runtimedir import default_runtime_dir

# The daemon's default, found the same way (per network namespace): config/runtimedir.py
DEFAULT_SOCKET = default_runtime_dir() / "control.sock"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_FAILED = EXIT_REFUSED  # a worker that did not get where it was sent: LSB "generic error"
TIMEOUT_S = 5.0  # one request and its reply
WAIT_TIMEOUT_S = 30.0  # start/stop/restart: how long to wait for the outcome, by default
POLL_INTERVAL_S = 0.1  # start/stop/restart: how often to read `status` while waiting
DISTRIBUTION = "gwlb-appliance"
FAILED_STATES = frozenset({"BACKOFF", "FATAL", "EXITED"})
CAPTURE_COUNT, CAPTURE_SECONDS = 1000, 60.0  # capture's bounds, unless given
CAPTURE_MAX_COUNT, CAPTURE_MAX_SECONDS = 10_000_000, 3600.0  # the daemon's too (capturing.py)
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
    "flows": Command(
        "[SLOT|all] [--addr ADDRESS] [--port PORT] [--endpoint ID] [--verdict VERDICT]",
        "the flows the workers track: endpoint, addresses and ports, age, idle time, packets "
        "and bytes each way, verdict and the rule that decided it",
    ),
    "capture": Command(
        "[SLOT|all] [--filter EXPR] [--count N] [--seconds S] -w FILE",
        "the inner packets as received (and, when changed, as sent) into a pcapng FILE, each "
        "with its verdict, rule, endpoint and worker as a comment; -w - streams it to standard "
        "output (| tshark -r -)",
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
    filters: tuple[str, ...] = ()  # flows: "key=value" words, as they go on the wire
    filter_text: str = ""  # capture --filter
    seconds: float | None = None  # capture --seconds
    output: str | None = None  # capture -w FILE ("-": standard output)


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


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port from 0 to 65535, not {text!r}")
    return int(text)


def _endpoint(text: str) -> str:
    if len(text) != 16 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"an endpoint id is 16 hex digits, not {text!r}")
    return text.lower()


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


def _capture_filter(text: str) -> str:
    try:
        compile_filter(text)
    except FilterError as error:
        raise argparse.ArgumentTypeError(
            f"{error}; correct the filter there ('appliancectl help capture' shows the words)"
        ) from None
    return text


def _capture_count(text: str) -> int:
    if text.isascii() and text.isdigit() and 1 <= int(text) <= CAPTURE_MAX_COUNT:
        return int(text)
    raise argparse.ArgumentTypeError(f"a number of packets, 1 to {CAPTURE_MAX_COUNT}, not {text!r}")


def _capture_seconds(text: str) -> float:
    value = _seconds(text)
    if value > CAPTURE_MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"at most {CAPTURE_MAX_SECONDS:g} seconds, not {text!r}")
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
    elif name == "flows":
        parser.add_argument(
            "target", metavar="SLOT|all", nargs="?", type=_slot, help="a slot, or all (default)"
        )
        parser.add_argument("--addr", metavar="ADDRESS", help="either end is this address")
        parser.add_argument("--port", metavar="PORT", type=_port, help="either end's port")
        parser.add_argument("--endpoint", metavar="ID", type=_endpoint, help="16 hex digits")
        parser.add_argument(
            "--verdict", choices=("pass", "drop", "reject", "undecided"), help="how it was decided"
        )
    elif name == "capture":
        _capture_arguments(parser)
    return parser


def _capture_arguments(parser: _Parser) -> None:
    parser.add_argument(
        "target", metavar="SLOT|all", nargs="?", type=_slot, help="a slot, or all (default)"
    )
    parser.add_argument(
        "--filter",
        metavar="EXPR",
        type=_capture_filter,
        default="",
        help="keep only the packets EXPR matches, in tcpdump's words: host, src, dst, net, port, "
        "portrange, tcp, udp, icmp, icmp6, ip, ip6, proto N, endpoint ID, verdict V (pass, "
        "drop, reject, rewrite, unrewritable), with and, or, not and parentheses",
    )
    parser.add_argument(
        "--count",
        metavar="N",
        type=_capture_count,
        default=CAPTURE_COUNT,
        help=f"stop after N packets (default {CAPTURE_COUNT})",
    )
    parser.add_argument(
        "--seconds",
        metavar="S",
        type=_capture_seconds,
        default=CAPTURE_SECONDS,
        help=f"stop after S seconds (default {CAPTURE_SECONDS:g}, at most {CAPTURE_MAX_SECONDS:g})",
    )
    parser.add_argument(
        "-w", dest="output", metavar="FILE", required=True, help="the pcapng file; - for stdout"
    )


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
    filters = tuple(
        f"{key}={given[key]}"
        for key in ("addr", "port", "endpoint", "verdict")
        if given.get(key) is not None
    )
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
        filters=filters,
        filter_text=given.get("filter") or "",
        seconds=given.get("seconds"),
        output=given.get("output"),
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
