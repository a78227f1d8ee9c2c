"""The only code that chooses the device and the dtype.

auto device: cuda, then mps, then cpu. auto dtype: fp32 on cpu; on cuda and mps the model's configured
default if it names one (say bf16 for a model that overflows in fp16), else fp16. A device that is asked for and missing is an error naming the
devices that exist: never a silent fallback to the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmcli.errors import DeviceError, UsageError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    @property
    def device_name(self) -> str:
        return str(self.device)


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str) -> torch.device:
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from exc
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    here = available_devices()
    if device.type == "cuda":
        index = device.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {name}: no such CUDA device here",
                f"available devices: {', '.join(here)}",
            )
    if device.type == "mps" and "mps" not in here:
        raise DeviceError("--device mps: MPS is not available here", f"available devices: {', '.join(here)}")
    return device


def resolve_dtype(name: str, device: torch.device, model_default: str = "auto") -> torch.dtype:
    name = name.strip().lower()
    if name == "auto":
        if device.type == "cpu":
            name = "fp32"
        else:
            name = model_default if model_default != "auto" else "fp16"
    if name not in DTYPES:
        raise UsageError(f"--dtype {name!r} is not one of auto, {', '.join(DTYPES)}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"--dtype bf16 is not supported on {device}", "use --dtype fp16")
    return DTYPES[name]


def resolve(device: str = "auto", dtype: str = "auto", model_default: str = "auto") -> Runtime:
    dev = resolve_device(device)
    return Runtime(device=dev, dtype=resolve_dtype(dtype, dev, model_default))


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError MPS and older torch raise."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
