"""A process's CPU priority: its nice value and, on Linux 6.12 and later, its time slice.

Why the slice: under EEVDF (Linux 6.6+) a task that is running keeps the CPU until it has run its
slice (about 1.4 ms by default on a 2-CPU machine), even when a task of higher priority wakes up.
The health service runs at nice 10, so it gets little CPU when the data path is busy, but while it
answers a probe, a worker woken by a packet can wait for the rest of that slice. That wait was the
tail of the data path's latency. A 100 us slice for the health service bounds it.

Measured with deploy/bench/run.py on the 2-vCPU dev VM, 64 B and 1400 B mix, four runs each:
p99 at 10k pps over the C reflector's was 1.25 - 3.78x (mean 2.05) with the default slice and
1.00 - 1.99x (mean 1.31) with 100 us.

Kernels before 6.12 ignore sched_runtime for fair tasks, and sched_setattr still sets the nice
value there. Where the syscall is not known (another architecture), only the nice value is set.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

# sched_setattr(2)'s number per architecture: x86_64's own table, and the generic one (arm64).
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(platform.machine())
# struct sched_attr (SCHED_ATTR_SIZE_VER1): size, policy, flags, nice, priority, runtime,
# deadline, period, util_min, util_max.
_SCHED_ATTR = struct.Struct("=IIQiIQQQII")
SCHED_OTHER = 0

_libc = ctypes.CDLL(None, use_errno=True)


def set_priority(pid: int, nice: int, slice_us: int) -> None:
    """Give `pid` (its main thread; threads and children it starts later inherit it) the nice
    value `nice` and, when `slice_us` > 0, a time slice of `slice_us` microseconds.
    Raises OSError when the kernel refuses."""
    if slice_us <= 0 or _SYS_SCHED_SETATTR is None:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        return
    attr = ctypes.create_string_buffer(
        _SCHED_ATTR.pack(_SCHED_ATTR.size, SCHED_OTHER, 0, nice, 0, slice_us * 1000, 0, 0, 0, 0)
    )
    if _libc.syscall(_SYS_SCHED_SETATTR, pid, attr, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"sched_setattr: {os.strerror(code)}")
