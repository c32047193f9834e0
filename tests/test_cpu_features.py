"""The CPU description benchmark reports carry and the flags the half-precision checks read
(diffbir_modules/cpu_features.py), from /proc/cpuinfo texts of the shapes Linux writes."""

import os

import pytest

from diffbir_modules import cpu_features

# Two processors each, as Linux lists them; flags cut to the ones that matter and a few around them.
AVX2_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx f16c fma avx2 sha_ni
bugs\t\t: sysret_ss_attrs

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx f16c fma avx2 sha_ni
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics fphp asimdhp sve bf16 i8mm
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("text,model,extensions,flag", [
    (AVX2_EPYC, "AMD EPYC", "AVX2", "avx2"),
    (SAPPHIRE_RAPIDS, "Intel(R) Xeon(R) Platinum 8480+", "AVX-512, AVX-512 BF16, AVX-512 FP16, AMX", "amx_bf16"),
    ("processor\t: 0\nmodel name\t: Old\nflags\t\t: fpu sse sse2\n", "Old", "no AVX", "sse2"),
])
def test_x86_cpu_named_with_its_widest_vector_set(tmp_path, text, model, extensions, flag):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert cpu_features.describe(str(cpuinfo)) == f"{model}, {os.cpu_count()} cores, {extensions}"
    assert flag in cpu_features.flags(str(cpuinfo))
    assert "vnmi" not in cpu_features.flags(str(cpuinfo))  # "vmx flags" is another field


def test_arm_cpu_named_by_its_features(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(GRAVITON3)
    assert {"bf16", "fphp", "sve"} <= cpu_features.flags(str(cpuinfo))
    assert cpu_features.describe(str(cpuinfo)).endswith(f", {os.cpu_count()} cores, NEON, SVE, BF16, FP16")


def test_without_cpuinfo_the_model_comes_from_python(tmp_path):
    missing = str(tmp_path / "absent")
    assert cpu_features.flags(missing) is None
    description = cpu_features.describe(missing)
    assert description.endswith(f", {os.cpu_count()} cores") and not description.startswith(",")
