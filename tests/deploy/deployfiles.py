"""Reading the deployment files the way their tools would, without the tools (or AWS).

HCL (Terraform, Packer) goes through python-hcl2 and comes back as plain dicts: string values
without their quotes, expressions as "${...}" strings, blocks as lists of dicts, labelled blocks
keyed by label. systemd units are read with the rules of systemd.syntax(7) that our unit uses.
The cloud-init template is rendered the way the gwlb-fleet module's templatefile() call does.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hcl2
from hcl2 import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MODULE_DIR = DEPLOY / "terraform" / "modules" / "gwlb-fleet"
EXAMPLE_DIR = DEPLOY / "terraform" / "examples" / "demo"
PACKER_DIR = DEPLOY / "packer"
PACKER_TEMPLATE = PACKER_DIR / "gwlb-appliance.pkr.hcl"
PROVISION_SH = PACKER_DIR / "provision.sh"
WHEELHOUSE_SH = PACKER_DIR / "build-wheelhouse.sh"
UNIT_FILE = DEPLOY / "systemd" / "gwlb-appliance.service"
SYSUSERS_FILE = DEPLOY / "systemd" / "gwlb-appliance.sysusers"
USER_DATA = DEPLOY / "cloud-init" / "user-data.yaml"
# The logs' way to CloudWatch: the agent's config (a template for the log group), the journal
# copier and its unit, journal.log's rotation.
AGENT_CONFIG = PACKER_DIR / "cloudwatch-agent.json"
JOURNAL_UNIT = DEPLOY / "systemd" / "gwlb-appliance-journal.service"
JOURNAL_SH = DEPLOY / "systemd" / "gwlb-appliance-journal.sh"
LOGROTATE = PACKER_DIR / "gwlb-appliance.logrotate"

VENV = "/opt/gwlb-appliance/venv"
SITE_CONFIG = "/etc/gwlb-appliance/appliance.toml"
SERVICE_USER = "gwlb-appliance"
CAPABILITIES = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}

# The `terraform` fixture: runs `terraform ARGS` in `cwd`.
Terraform = Callable[..., subprocess.CompletedProcess[str]]

_OPTIONS = SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True, preserve_heredocs=False
)


# ---- HCL -----------------------------------------------------------------------------------------


@functools.cache
def load_hcl(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        return hcl2.load(file, serialization_options=_OPTIONS)


def load_dir(directory: Path) -> dict[str, list[Any]]:
    """Every .tf file of a Terraform module, merged: top-level keys to the list of their blocks."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        for key, blocks in load_hcl(path).items():
            merged.setdefault(key, []).extend(blocks if isinstance(blocks, list) else [blocks])
    return merged


def labelled(doc: dict[str, list[Any]], kind: str) -> dict[str, Any]:
    """Blocks with one label (variable, output, module): label -> body."""
    return {label: body for block in doc.get(kind, []) for label, body in block.items()}


def resources(doc: dict[str, list[Any]], rtype: str, kind: str = "resource") -> dict[str, Any]:
    """Blocks with two labels (resource, data, source) of one type: name -> body."""
    return {
        name: body
        for block in doc.get(kind, [])
        for label, named in block.items()
        if label == rtype
        for name, body in named.items()
    }


def only(mapping: dict[str, Any]) -> Any:
    assert len(mapping) == 1, f"expected exactly one, found {sorted(mapping)}"
    return next(iter(mapping.values()))


def dynamic_blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [block[name] for block in body.get("dynamic", []) if name in block]


def expr(value: Any) -> str:
    """The expression inside a "${...}" string, or the value as text."""
    text = str(value)
    return text[2:-1] if text.startswith("${") and text.endswith("}") else text


def heredoc_default(path: Path, variable: str) -> str:
    """A variable's `default = <<-EOT` text, with the indentation Terraform strips removed."""
    source = path.read_text(encoding="utf-8")
    block = re.search(rf'variable "{variable}" {{(.*?)\n}}', source, re.S)
    assert block, f"no variable {variable} in {path}"
    heredoc = re.search(r"default\s*=\s*<<-(\w+)\n(.*?)\n\s*\1\b", block.group(1), re.S)
    assert heredoc, f"variable {variable} has no <<- heredoc default"
    return textwrap.dedent(heredoc.group(2)) + "\n"


# ---- cloud-init, rendered as the module renders it -----------------------------------------------

PLACEHOLDER = re.compile(r"(?<!\$)\$\{([^}]*)\}")


def tf_indent(spaces: int, text: str) -> str:
    """Terraform's indent(): every line but the first gets `spaces` spaces."""
    first, *rest = text.split("\n")
    return "\n".join([first, *(" " * spaces + line for line in rest)])


def render_user_data(
    gwlb_cidrs: list[str],
    policy_toml: str,
    *,
    log_group_name: str = "/gwlb-appliance/fleet1",
    flowlog_enabled: bool = True,
    flowlog_sample_allowed: int = 1,
    dataplane_io: str = "ring",
) -> str:
    """deploy/cloud-init/user-data.yaml with the values gwlb-fleet's templatefile() passes."""
    values = {
        "allow_sources": json.dumps(gwlb_cidrs, separators=(",", ":")),  # jsonencode()
        "dataplane_io": dataplane_io,  # var.dataplane_io, validated to "ring" or "socket"
        "policy_toml": tf_indent(6, policy_toml.strip()),  # indent(6, trimspace(...))
        "flowlog_enabled": "true" if flowlog_enabled else "false",  # a bool in a template
        "flowlog_sample_allowed": str(flowlog_sample_allowed),
        "log_group_name": log_group_name,  # local.log_group_name
    }
    template = USER_DATA.read_text(encoding="utf-8")
    return PLACEHOLDER.sub(lambda m: values[m.group(1).strip()], template)


# ---- systemd -------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value assigned, in order (systemd.syntax(7), no continuations)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"line {number}: {raw!r}"
        assert not line.endswith("\\"), f"line {number}: continuation lines are not expected"
        key, value = (part.strip() for part in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return sections


def unit_value(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    """The effective value of a single-valued setting (the last assignment wins)."""
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is not set"
    return values[-1]


# ---- MemoryDenyWriteExecute=yes, reproduced ------------------------------------------------------

# Python source defining install_mdwe_filter(): the seccomp filter systemd installs for
# MemoryDenyWriteExecute=yes (src/shared/seccomp-util.c): mmap with PROT_WRITE|PROT_EXEC,
# mprotect/pkey_mprotect adding PROT_EXEC and shmat with SHM_EXEC fail with EPERM. It sets
# PR_SET_NO_NEW_PRIVS first (as NoNewPrivileges=yes does; seccomp requires it of non-root), checks
# that the filter bites, and returns None, or why it cannot run here. Filters survive exec and
# fork, so a process started after it lives under it, with all its children.
MDWE_PRELUDE = textwrap.dedent(
    """
    import ctypes, errno, mmap, os, platform, struct, sys

    def install_mdwe_filter():
        arches = {  # audit arch, then the numbers of mmap, mprotect, pkey_mprotect, shmat
            "x86_64": (0xC000003E, 9, 10, 329, 30),
            "aarch64": (0xC00000B7, 222, 226, 288, 196),
        }
        if platform.machine() not in arches:
            return f"no syscall numbers for {platform.machine()}"
        arch, nr_mmap, nr_mprotect, nr_pkey, nr_shmat = arches[platform.machine()]
        ld_abs, jeq, jset, and_k, ret = 0x20, 0x15, 0x45, 0x54, 0x06
        allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM
        arg2 = 16 + 2 * 8  # seccomp_data.args[2], its low word (little-endian)
        program = [  # (code, jump if true, jump if false, k); jumps skip that many instructions
            (ld_abs, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, allow),
            (ld_abs, 0, 0, 0),
            (jeq, 4, 0, nr_mmap), (jeq, 6, 0, nr_mprotect), (jeq, 5, 0, nr_pkey),
            (jeq, 6, 0, nr_shmat), (ret, 0, 0, allow),
            (ld_abs, 0, 0, arg2), (and_k, 0, 0, 6), (jeq, 4, 5, 6),  # mmap: both W and X
            (ld_abs, 0, 0, arg2), (jset, 2, 3, mmap.PROT_EXEC),      # mprotect: X
            (ld_abs, 0, 0, arg2), (jset, 0, 1, 0o100000),            # shmat: SHM_EXEC
            (ret, 0, 0, deny), (ret, 0, 0, allow),
        ]
        code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in program))
        fprog = struct.pack("@HxxxxxxP", len(program), ctypes.addressof(code))
        fprog_buffer = ctypes.create_string_buffer(fprog)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return f"PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}"
        if libc.prctl(22, 2, ctypes.addressof(fprog_buffer), 0, 0) != 0:  # PR_SET_SECCOMP
            if ctypes.get_errno() == errno.EINVAL:
                return "this kernel has no seccomp filters"
            raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except PermissionError:
            return None
        raise AssertionError("the filter did not refuse a writable and executable mapping")
    """
)
