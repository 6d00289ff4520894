"""Can this machine run models on its GPU? Decided once, before the first worker starts.

NVML is read in-process (it never initialises CUDA). The CUDA part (torch import, architecture check,
one tiny kernel + synchronize) runs in a throwaway process with a deadline: a broken driver or a
missing kernel image must cost that process, not the app.
"""
from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from utils.config import Settings
from utils.engine import gpu
from utils.engine.protocol import classify
from utils.engine.worker import python_command
from utils.messages import one_line

BLACKWELL_INDEX = "https://download.pytorch.org/whl/cu128"
CURRENT_INDEX = "https://download.pytorch.org/whl/cu126"


class PreflightResult(BaseModel):
    cuda_usable: bool
    reason: str  # one line: why CUDA is or is not used
    fix: str | None = None  # what to do when a GPU is there but cannot be used
    device_setting: str
    gpu_present: bool = False
    gpus: list[gpu.GpuReading] = Field(default_factory=list)
    driver: str | None = None
    nvml_note: str = ""  # why NVML lists no GPU (e.g. no driver library), when it lists none
    device_name: str | None = None
    device_uuid: str | None = None
    capability: str | None = None
    torch_version: str | None = None
    torch_cuda: str | None = None
    arch_list: list[str] = Field(default_factory=list)
    memory_free_mb: float | None = None
    memory_total_mb: float | None = None
    seconds: float = 0.0
    checked_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def arch_supported(capability: str, arch_list: list[str]) -> bool:
    """A cubin runs on later minors of its major (sm_86 on 8.9); PTX (compute_XY) is JIT-compiled forward."""
    major, minor = (int(part) for part in capability.split("."))
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = number.rstrip("af")  # sm_90a, sm_100f: architecture-specific variants
        if not digits.isdigit() or len(digits) < 2:
            continue
        arch_major, arch_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def build_hint(capability: str | None, torch_version: str | None, arch_list: list[str]) -> str:
    """Names the torch build to install for a GPU this torch has no kernels for."""
    if capability is None:
        return ("Install a PyTorch build compiled for this GPU's architecture "
                "(compare torch.cuda.get_arch_list() with the GPU's compute capability).")
    arch = "sm_" + capability.replace(".", "")
    index = BLACKWELL_INDEX if int(capability.split(".")[0]) >= 10 else CURRENT_INDEX
    has = ", ".join(arch_list) or "no CUDA architecture"
    return (f"torch {torch_version or '?'} has kernels for {has}, not for this GPU ({arch}). "
            f"Install a build that includes {arch}, e.g. `pip install torch --index-url {index}`"
            f"{' (sm_100/sm_120 need a cu128+ build)' if index == BLACKWELL_INDEX else ''}.")


def cuda_facts() -> dict:
    """What torch finds; "error" names the first failure. Runs in the throwaway process."""
    facts: dict = {}
    try:
        import torch

        facts.update(torch_version=torch.__version__, torch_cuda=torch.version.cuda)
        if not torch.cuda.is_available():
            build = "this torch is a CPU-only build" if torch.version.cuda is None else "driver or device problem"
            facts["error"] = f"torch.cuda.is_available() is False ({build})"
            return facts
        major, minor = torch.cuda.get_device_capability(0)
        props = torch.cuda.get_device_properties(0)
        facts.update(capability=f"{major}.{minor}", arch_list=torch.cuda.get_arch_list(), device_name=props.name,
                     device_uuid=str(getattr(props, "uuid", "")) or None)
        if not arch_supported(facts["capability"], facts["arch_list"]):
            facts.update(error=f"torch has no kernels for sm_{major}{minor}", unsupported_arch=True)
            return facts
        values = torch.arange(16, device="cuda", dtype=torch.float32)
        total = float((values * 2).sum())
        torch.cuda.synchronize()
        free, capacity = torch.cuda.mem_get_info()
        facts.update(memory_free_mb=round(free / gpu.MIB, 1), memory_total_mb=round(capacity / gpu.MIB, 1))
        if total != 240.0:
            facts["error"] = f"a test kernel returned {total}, expected 240"
    except Exception as exc:  # whatever breaks here is the answer
        facts.update(error=one_line(exc), unsupported_arch=classify(exc)[0] == "unsupported_arch")
    return facts


def main() -> None:
    """Child entry: the facts as the last line of stdout (libraries may print before it)."""
    print(json.dumps(cuda_facts()), flush=True)


def _probe_cuda(timeout: float) -> dict:
    try:
        done = subprocess.run(python_command("utils.engine.preflight"), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:  # run() has killed and reaped it
        return {"error": f"the CUDA probe did not finish within {timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"the CUDA probe process died (exit code {done.returncode})"}
    return json.loads(lines[-1])


def run(settings: Settings) -> PreflightResult:
    started = time.perf_counter()
    device = settings.profile.device
    nvml = gpu.snapshot()
    base: dict[str, Any] = dict(device_setting=device, gpu_present=bool(nvml.readings), gpus=nvml.readings,
                                driver=nvml.driver, nvml_note=nvml.note)
    if device == "cpu":
        return PreflightResult(cuda_usable=False, reason="profile.device is cpu: CUDA checks skipped", **base,
                               seconds=time.perf_counter() - started)
    if not nvml.readings and device == "auto":
        return PreflightResult(cuda_usable=False, reason="no NVIDIA GPU", **base,
                               seconds=time.perf_counter() - started)
    facts = _probe_cuda(settings.guard.probe_timeout_s)
    error = facts.pop("error", None)
    fix = None
    if facts.pop("unsupported_arch", False):
        fix = build_hint(facts.get("capability"), facts.get("torch_version"), facts.get("arch_list", []))
    reason = f"CUDA unusable: {error}" if error else f"CUDA ready on {facts.get('device_name')}"
    return PreflightResult(cuda_usable=error is None, reason=reason, fix=fix, **base, **facts,
                           seconds=time.perf_counter() - started)
