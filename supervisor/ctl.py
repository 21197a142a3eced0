"""`appliancectl`: drive a running applianced over its control socket, as supervisorctl does.

    appliancectl [--socket PATH] [--json] COMMAND [ARGS]   one command, then exit
    appliancectl [--socket PATH]                            an interactive shell

Exit codes follow the LSB: 0 done; 1 the daemon refused the command; 3 `status` found a worker that
is not RUNNING; 4 the daemon cannot be reached (with a sentence, never a traceback); 2 usage.
"""

from __future__ import annotations

import argparse
import cmd
import errno
import socket
import sys
from pathlib import Path
from typing import Any

import orjson

from supervisor.protocol import PROTOCOL_VERSION, ProtocolError, recv_message, send_message

DEFAULT_SOCKET = Path("/run/gwlb-appliance/control.sock")
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
TIMEOUT_S = 5.0
COMMANDS = {
    "status": "the workers: slot, pid, CPU, state, uptime, restarts, packets in/out, drops",
    "stats": "every counter, per worker and in total",
    "start": "start SLOT|all",
    "stop": "stop SLOT|all (the slot's socket stays bound; its flows wait for it)",
    "restart": "restart SLOT|all",
    "reload": "validate the config file again and apply its policy (like SIGHUP)",
    "drain": "health goes red on purpose: GWLB sends no new flows",
    "undrain": "health reports the facts again",
    "tail": "tail [N] [-f]: the daemon's last N log lines; -f follows",
    "version": "the daemon's version and protocol",
    "shutdown": "stop the workers gracefully and exit",
}


class Unreachable(Exception):
    """The daemon cannot be reached; the message is a sentence for the operator."""


def request(path: Path, command: str, args: list[str]) -> tuple[socket.socket, dict[str, Any]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_S)
    try:
        sock.connect(str(path))
        send_message(sock, {"v": PROTOCOL_VERSION, "cmd": command, "args": args})
        reply = recv_message(sock)
    except FileNotFoundError:
        sock.close()
        raise Unreachable(f"applianced is not running: no control socket at {path}.") from None
    except ConnectionRefusedError:
        sock.close()
        raise Unreachable(
            f"applianced is not running: nothing answers at {path} (a stale socket file)."
        ) from None
    except PermissionError:
        sock.close()
        raise Unreachable(
            f"permission denied on {path}: run as root or as a member of the "
            "control socket's group."
        ) from None
    except (OSError, ProtocolError) as error:
        sock.close()
        reason = errno.errorcode.get(getattr(error, "errno", 0) or 0, str(error))
        raise Unreachable(f"applianced at {path} did not answer properly ({reason}).") from None
    if reply is None or reply.get("v") != PROTOCOL_VERSION:
        sock.close()
        version = None if reply is None else reply.get("v")
        raise Unreachable(
            f"applianced at {path} speaks protocol {version!r}, this "
            f"appliancectl speaks {PROTOCOL_VERSION}: upgrade one of them."
        )
    return sock, reply


def run_command(path: Path, command: str, args: list[str], as_json: bool) -> int:
    if command not in COMMANDS:
        print(f"appliancectl: unknown command {command!r}; try 'help'", file=sys.stderr)
        return EXIT_USAGE
    follow = command == "tail" and "-f" in args
    wire_args = [a for a in args if a != "-f"] + (["follow"] if follow else [])
    sock, reply = request(path, command, wire_args)
    try:
        if not reply.get("ok"):
            print(f"appliancectl: {command}: {reply.get('error')}", file=sys.stderr)
            return EXIT_REFUSED
        if as_json:
            print(orjson.dumps(_strip(reply), option=orjson.OPT_INDENT_2).decode())
        else:
            print(render(command, reply))
        if follow:
            _follow(sock)
    finally:
        sock.close()
    if command == "status" and any(w["state"] != "RUNNING" for w in reply["workers"]):
        return EXIT_NOT_RUNNING
    if command == "reload" and not reply["reload"]["ok"]:
        return EXIT_REFUSED
    return EXIT_OK


def _follow(sock: socket.socket) -> None:
    sock.settimeout(None)
    try:
        while (message := recv_message(sock)) is not None:
            print(message.get("line", ""), flush=True)
    except KeyboardInterrupt:
        pass


def _strip(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("v", "ok", "follow")}


def render(command: str, reply: dict[str, Any]) -> str:
    if command == "status":
        return render_status(reply)
    if command == "stats":
        return render_stats(reply)
    if command == "tail":
        return "\n".join(str(line) for line in reply["lines"])
    if command == "reload":
        outcome = reply["reload"]
        return ("reloaded: " if outcome["ok"] else "") + str(outcome["detail"])
    return " ".join(f"{k}: {v}" for k, v in _strip(reply).items())


def render_status(reply: dict[str, Any]) -> str:
    sup = reply["supervisor"]
    lines = [
        f"supervisor pid {sup['pid']}, up {sup['uptime_s']} s, config {sup['config']} "
        f"(generation {sup['generation']}), ready: {'yes' if sup['ready'] else 'no'}, "
        f"draining: {'yes' if sup['draining'] else 'no'}",
        f"last reload: {sup['last_reload']['detail']}",
        *(f"interface: {fact}" for fact in sup.get("interfaces", [])),
        f"{'SLOT':>4} {'PID':>7} {'CPU':>3} {'STATE':<9} {'UPTIME':>9} {'RESTARTS':>8} "
        f"{'IN':>10} {'OUT':>10} {'DROPS':>8}",
    ]
    for w in reply["workers"]:
        uptime = "-" if w["uptime_s"] is None else f"{w['uptime_s']}s"
        lines.append(
            f"{w['slot']:>4} {w['pid'] or '-':>7} {w['cpu']:>3} {w['state']:<9} "
            f"{uptime:>9} {w['restarts']:>8} {w['packets_in']:>10} "
            f"{w['packets_out']:>10} {w['drops']:>8}"
        )
    health = reply.get("health")
    if health:
        lines.append(
            f"health service: {health['state']}, pid {health['pid'] or '-'}, "
            f"{health['bind']}, restarts {health['restarts']}"
        )
    return "\n".join(lines)


def render_stats(reply: dict[str, Any]) -> str:
    columns = [*(f"worker {k}" for k in range(len(reply["workers"]))), "total"]
    rows = [*reply["workers"], reply["total"]]
    names = [k for k, v in reply["total"].items() if not isinstance(v, dict)]
    lines = [f"{'counter':<28}" + "".join(f"{c:>14}" for c in columns)]
    lines += [f"{name:<28}" + "".join(f"{row[name]:>14}" for row in rows) for name in names]
    for group in ("malformed_by_reason", "dropped_by_rule", "send_errors_by_errno"):
        for key in reply["total"][group]:
            label = f"{group.split('_by_')[0]}[{key}]"
            lines.append(f"{label:<28}" + "".join(f"{row[group].get(key, 0):>14}" for row in rows))
    return "\n".join(lines)


class Shell(cmd.Cmd):
    intro = "appliancectl shell: 'help' lists the commands, 'quit' leaves."
    prompt = "appliance> "

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.last = EXIT_OK

    def onecmd(self, line: str) -> bool:
        words = line.split()
        if not words:
            return False
        if words[0] == "help":
            self.do_help("")
            return False
        if words[0] in ("quit", "exit", "EOF"):
            return True
        try:
            self.last = run_command(self.path, words[0], words[1:], as_json="--json" in words)
        except Unreachable as error:
            print(error, file=sys.stderr)
            self.last = EXIT_UNREACHABLE
        return False

    def do_help(self, arg: str) -> None:
        for name, text in COMMANDS.items():
            print(f"  {name:<9} {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="appliancectl",
        description="Drive a running applianced.",
        epilog="commands: " + ", ".join(COMMANDS),
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=DEFAULT_SOCKET,
        help=f"control socket (default: {DEFAULT_SOCKET})",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("command", nargs="?", help="one command; none starts a shell")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            shell = Shell(args.socket)
            shell.cmdloop()
            return shell.last
        return run_command(args.socket, args.command, args.args, args.json)
    except Unreachable as error:
        print(f"appliancectl: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
