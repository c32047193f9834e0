"""What this CPU is and which of its instruction sets matter here, as Linux lists them in /proc/cpuinfo.

Read by the half-precision checks (bf16 and fp16 run in hardware only with their instructions, and are
emulated 10-1000x slower without them: ``cpu_precision``) and written into the benchmark reports: the
pack's 512 px cfg step took 14.6 s on a 2-core AVX2 CPU and 7.2-8.5 s on a 2-core AVX-512 one
(docs/performance.md), so a CPU timing means something only beside the CPU it came from. Plain Python
(no torch, no ComfyUI)."""

from __future__ import annotations

import os
import platform

CPUINFO = "/proc/cpuinfo"

# x86 flags worth naming in a report, in the order they are named, beside the widest vector set
_X86_EXTRAS = (("avx512_bf16", "AVX-512 BF16"), ("avx512_fp16", "AVX-512 FP16"), ("amx_bf16", "AMX"))
_ARM_EXTRAS = (("sve", "SVE"), ("bf16", "BF16"), ("fphp", "FP16"))


def _first_values(cpuinfo: str) -> dict[str, str] | None:
    """The first value of each field of ``cpuinfo`` (keys lowercased: x86 writes "flags", Arm "Features");
    None where the file cannot be read (not Linux)."""
    try:
        with open(cpuinfo) as lines:
            fields = {}
            for line in lines:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
            return fields
    except OSError:
        return None


def flags(cpuinfo: str = CPUINFO) -> set[str] | None:
    """The instruction-set flags of the first CPU in ``cpuinfo``; None where it cannot be read."""
    fields = _first_values(cpuinfo)
    if fields is None:
        return None
    return set((fields.get("flags") or fields.get("features") or "").split())


def vector_extensions(cpu_flags: set[str]) -> str:
    """The widest vector instruction set of ``cpu_flags`` and the half-precision ones beside it, e.g.
    "AVX-512, AVX-512 BF16, AMX" or "AVX2"."""
    if "asimd" in cpu_flags:
        names = ["NEON", *(name for flag, name in _ARM_EXTRAS if flag in cpu_flags)]
    else:
        widest = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                       if flag in cpu_flags), "no AVX")
        names = [widest, *(name for flag, name in _X86_EXTRAS if flag in cpu_flags)]
    return ", ".join(names)


def model_name(cpuinfo: str = CPUINFO) -> str:
    """The CPU's model name (x86 Linux), else what Python's ``platform`` knows."""
    fields = _first_values(cpuinfo) or {}
    return fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def describe(cpuinfo: str = CPUINFO) -> str:
    """The CPU as a benchmark report names it: model, cores and vector extensions, e.g.
    "AMD EPYC, 2 cores, AVX2"."""
    cpu_flags = flags(cpuinfo)
    extensions = f", {vector_extensions(cpu_flags)}" if cpu_flags else ""
    return f"{model_name(cpuinfo)}, {os.cpu_count()} cores{extensions}"
