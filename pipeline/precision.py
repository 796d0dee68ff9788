"""Which numeric precision a network trains in: the setting `precision`, resolved from the hardware when `auto`.

Mixed precision computes the layers in bfloat16 or float16 and keeps every
variable in float32 (models.networks.build_network takes the policy per
network); it pays where the chip has the instructions for it and costs where
TensorFlow has to emulate them. `auto` picks:

    GPUs of compute capability 8.0 or more    mixed_bfloat16
    GPUs of 7.x (tensor cores, no bfloat16)   mixed_float16, with loss scaling
    older GPUs                                float32
    a CPU with amx_bf16 or avx512_bf16        mixed_bfloat16
    any other CPU                             float32

The rule is a pure function of the hardware (resolve), so it can be tested
on any machine with the hardware faked; this_machine reads the real one
(TensorFlow, for the GPUs), only when a setting is `auto`.
"""
import functools
from dataclasses import dataclass, replace
from pathlib import Path

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
CHOICES = ("auto", *POLICIES)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo's names for the bfloat16 instructions


@dataclass(frozen=True)
class Hardware:
    """What the choice depends on: the CPU's flags and each GPU's compute capability (none: no GPU)."""
    cpu_flags: frozenset = frozenset()
    gpu_capabilities: tuple = ()  # (major, minor) per GPU

    def bf16_flags(self) -> list:
        """Which of the CPU's bfloat16 instructions it has, as /proc/cpuinfo names them."""
        return [flag for flag in BF16_CPU_FLAGS if flag in self.cpu_flags]


@dataclass(frozen=True)
class Precision:
    policy: str  # one of POLICIES
    why: str     # "set", or what `auto` saw
    float32_last_epochs: int = 0  # under a mixed policy, each network's last epochs train in float32

    def describe(self) -> str:
        tail = {0: "", 1: ", each network's last epoch in float32"}.get(
            self.float32_last_epochs, f", each network's last {self.float32_last_epochs} epochs in float32")
        return f"{self.policy} ({self.why}){tail}"

    def as_entry(self) -> dict:
        """As summary.json records it (Precision(**entry) reads it back)."""
        return {"policy": self.policy, "why": self.why,
                **({"float32_last_epochs": self.float32_last_epochs} if self.float32_last_epochs else {})}

    def ending_in_float32(self, epochs: int) -> "Precision":
        """This precision with its last `epochs` in float32, where it is mixed (float32 has nothing to end)."""
        return replace(self, float32_last_epochs=epochs if self.policy != "float32" else 0)


def resolve(asked: str, hardware: Hardware) -> Precision:
    """The policy for the setting `asked` on `hardware`, and why."""
    if asked != "auto":
        return Precision(asked, "set")
    if hardware.gpu_capabilities:
        major, minor = min(hardware.gpu_capabilities)  # the slowest GPU decides: every replica runs one policy
        capability = f"GPU compute capability {major}.{minor}"
        if major >= 8:
            return Precision("mixed_bfloat16", f"auto: {capability} has bfloat16")
        if major >= 7:
            return Precision("mixed_float16", f"auto: {capability} has float16 tensor cores, not bfloat16")
        return Precision("float32", f"auto: {capability} has no tensor cores")
    flags = hardware.bf16_flags()
    if flags:
        return Precision("mixed_bfloat16", f"auto: CPU has {' and '.join(flags)}")
    return Precision("float32", f"auto: CPU has none of {', '.join(BF16_CPU_FLAGS)}")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset:
    """The CPU's feature flags as Linux lists them (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.cache
def this_machine() -> Hardware:
    """This machine's hardware, read once: TensorFlow's GPUs and their compute capabilities, the CPU's flags."""
    import tensorflow as tf
    capabilities = tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
                         for gpu in tf.config.list_physical_devices("GPU"))
    return Hardware(cpu_flags(), capabilities)
