"""GPU catalog: names a config's ``target.gpu`` may use, and the facts kernel selection needs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    sm: int
    smem_bytes: int
    sms: int
    table: str  # which kernel table (kernels/<table>.json) configs are emitted from
    description: str = ""


_GPUS = [
    Gpu("h100", 90, 227 * 1024, 132, "h100", "NVIDIA H100 (Hopper)"),
    Gpu("h200", 90, 227 * 1024, 132, "h200", "NVIDIA H200 (Hopper, 141 GB HBM3e)"),
    Gpu("h20", 90, 227 * 1024, 78, "h100", "NVIDIA H20 (Hopper)"),
    Gpu("a100", 80, 163 * 1024, 108, "a100", "NVIDIA A100 (Ampere): no fp8 tensor cores"),
    Gpu("l40s", 89, 99 * 1024, 142, "h100", "NVIDIA L40S (Ada): fp8 tensor cores"),
    Gpu("b200", 100, 227 * 1024, 148, "h100", "NVIDIA B200 (Blackwell)"),
    Gpu("sm_80", 80, 163 * 1024, 108, "a100", "any sm_80 GPU"),
    Gpu("sm_89", 89, 99 * 1024, 128, "h100", "any sm_89 GPU"),
    Gpu("sm_90", 90, 227 * 1024, 132, "h100", "any sm_90 GPU"),
    Gpu("sm_100", 100, 227 * 1024, 148, "h100", "any sm_100 GPU"),
]

GPUS: dict[str, Gpu] = {g.name: g for g in _GPUS}
DEFAULT_GPU = "h100"


def gpu_from_device_name(device_name: str, capability: tuple[int, int]) -> Gpu:
    """Map a live device (torch.cuda.get_device_name, capability) to a catalog entry, for apply()'s
    check of the live GPU against the plan's target."""
    lowered = device_name.lower()
    for name in ("h200", "h100", "h20", "a100", "l40s", "b200"):
        if name in lowered.replace(" ", ""):
            return GPUS[name]
    sm = capability[0] * 10 + capability[1]
    return GPUS.get(f"sm_{sm}", Gpu(f"sm_{sm}", sm, 99 * 1024, 0, "h100", device_name))
