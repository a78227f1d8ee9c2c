"""mmcli doctor: what mmcli sees on this machine (versions, devices, caches, config, environment)."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer

from mmcli.errors import UsageError

NOT_INSTALLED = "not installed"
# distribution name as shown -> the name pip knows it by
PACKAGES = {
    "mmcli": "mmcli",
    "torch": "torch",
    "transformers": "transformers",
    "huggingface_hub": "huggingface_hub",
    "pillow": "pillow",
    "numpy": "numpy",
    "safetensors": "safetensors",
    "typer": "typer",
    "accelerate": "accelerate",
    "bitsandbytes": "bitsandbytes",
    "pyarrow": "pyarrow",
    "ray": "ray",
}
ENVIRONMENT = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "CUDA_VISIBLE_DEVICES",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "OMP_NUM_THREADS",
)
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def doctor(
    format: Annotated[
        str, typer.Option("--format", "-f", help="text | json (json is for scripts).")
    ] = "text",
) -> int:
    """Show what mmcli sees here: versions, devices and their dtypes, caches, config, environment.

    Nothing is downloaded. Paste its output into bug reports.
    """
    fmt = format.lower()
    if fmt not in ("text", "json"):
        raise UsageError(f"--format {format} is not available here; choose one of text, json")
    report = collect()
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_text(report))
    sys.stdout.flush()
    return 0


def collect() -> dict[str, Any]:
    """The whole report as plain data (the json format prints it as it is)."""
    return {
        "versions": versions(),
        "platform": platform.platform(),
        "devices": devices(),
        "caches": caches(),
        "server": server(),
        "config": config(),
        "environment": environment(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for shown, dist in PACKAGES.items():
        try:
            found[shown] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[shown] = NOT_INSTALLED
    found["torchvision"] = torchvision_state()
    return found


def torchvision_state() -> str:
    """Whether torchvision imports: mmcli never needs it, and one built for another torch is ignored."""
    try:
        version = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return f"{NOT_INSTALLED} (not needed)"
    import subprocess
    import sys

    probe = subprocess.run(  # in a child: a broken build can leave half-imported torch modules behind
        [sys.executable, "-c", "import torchvision"], capture_output=True, text=True, timeout=120
    )
    if probe.returncode == 0:
        return version
    lines = probe.stderr.strip().splitlines()
    reason = lines[-1] if lines else f"exit status {probe.returncode}"
    return f"{version} (does not import: {reason}; mmcli ignores it)"


def devices() -> list[dict[str, Any]]:
    """cpu, then each CUDA device, then mps, with the dtypes mmcli can run on each."""
    cpu: dict[str, Any] = {"device": "cpu", "name": platform.processor() or platform.machine()}
    try:
        import torch
    except ImportError:
        return [cpu | {"threads": os.cpu_count(), "dtypes": ["fp32"], "note": "torch is not installed"}]
    found = [cpu | {"threads": torch.get_num_threads(), "dtypes": ["fp32", "bf16"]}]
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if capability is not None:
        found[0]["capability"] = capability()
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            bf16 = torch.cuda.get_device_capability(index) >= (8, 0)
            found.append(
                {
                    "device": f"cuda:{index}",
                    "name": props.name,
                    "memory_bytes": int(props.total_memory),
                    "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
                    "dtypes": ["fp32", "fp16", *(["bf16"] if bf16 else [])],
                }
            )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append({"device": "mps", "name": "Apple Metal (MPS)", "dtypes": ["fp32", "fp16"]})
    return found


def directory_size(path: Path) -> int:
    """Bytes in the files under ``path`` (symbolic links not followed, so the hub's snapshots, which
    link to its blobs, are not counted twice)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _cache(path: Path) -> dict[str, Any]:
    exists = path.is_dir()
    return {"path": str(path), "exists": exists, "size_bytes": directory_size(path) if exists else None}


def caches() -> dict[str, Any]:
    """The caches in force: the embedding cache as a run would pick it (the config file's cache_dir wins
    over $MMCLI_CACHE_DIR), with ``from`` saying what chose it."""
    from mmcli import paths, userconfig

    try:
        from huggingface_hub import constants

        hub = Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - a dependency
        hub = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
    try:
        configured = userconfig.load().defaults.get("cache_dir")
    except UsageError:  # a broken config file: reported in the config section
        configured = None
    embeddings, source = paths.cache_dir_in_force(configured)
    if source == "config":
        source = f"config file {paths.config_file()}"
    return {"huggingface_hub": _cache(hub), "embeddings": _cache(embeddings) | {"from": source}}


def config() -> dict[str, Any]:
    """The user config file and the values in force: the file's [defaults], and each task's model."""
    from mmcli import paths, userconfig
    from mmcli.modeling import registry

    report: dict[str, Any] = {"path": str(paths.config_file()), "exists": paths.config_file().is_file()}
    try:
        loaded = userconfig.load()
        report["error"] = None
    except UsageError as exc:
        loaded = userconfig.UserConfig(paths.config_file())
        report["error"] = str(exc)
    report["defaults"] = dict(loaded.defaults)
    built_in = registry.models_table().get("defaults", {})
    report["models"] = {
        task: {"model": loaded.models[task], "from": "config"}
        if task in loaded.models
        else {"model": built_in.get(task), "from": "built-in"}
        for task in userconfig.TASKS
    }
    return report


def server() -> dict[str, Any]:
    """The mmcli serve runs would use: its socket, and the pid and models of the one answering there."""
    from mmcli.run.remote import paths
    from mmcli.run.remote.client import Remote

    path = paths.socket_path()
    found: dict[str, Any] = {"socket": str(path), "pid": None, "models": [], "refused": paths.untrusted(path)}
    if found["refused"] or not os.path.lexists(path):
        return found
    try:
        remote = Remote.open(path, timeout=2.0)
    except Exception:
        return found  # nothing answers: a socket left by a server that was killed
    try:
        status = remote.status()
        found |= {
            "pid": status["pid"],
            "version": remote.version,
            "models": [m["label"] for m in status["models"]],
        }
    except Exception:
        pass
    finally:
        remote.close()
    return found


def environment() -> dict[str, str | None]:
    names = [*ENVIRONMENT, *sorted(n for n in os.environ if n.startswith("MMCLI_"))]
    found: dict[str, str | None] = {}
    for name in names:
        value = os.environ.get(name)
        if value is not None and any(word in name for word in SECRET_WORDS):
            value = "(set, hidden)"
        found[name] = value
    return found


# -- text --------------------------------------------------------------------------------------------------
def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def render_text(report: dict[str, Any]) -> str:
    lines: list[str] = []

    def section(title: str, rows: list[tuple[str, str]]) -> None:
        lines.append(title)
        width = max((len(key) for key, _ in rows), default=0)
        lines.extend(f"  {key.ljust(width)}  {value}" for key, value in rows)
        lines.append("")

    section("Versions", [*report["versions"].items(), ("platform", report["platform"])])
    rows = []
    for dev in report["devices"]:
        detail = [dev.get("name") or ""]
        if "threads" in dev:
            detail.append(f"{dev['threads']} threads")
        if "memory_bytes" in dev:
            detail.append(human_size(dev["memory_bytes"]))
        detail.append("dtypes " + ", ".join(dev["dtypes"]))
        rows.append((dev["device"], "; ".join(d for d in detail if d)))
    section("Devices", rows)
    rows = []
    for name, cache in report["caches"].items():
        size = human_size(cache["size_bytes"]) if cache["exists"] else "not created yet"
        origin = f"; from {cache['from']}" if cache.get("from") else ""
        rows.append((name, f"{cache['path']} ({size}{origin})"))
    section("Caches", rows)
    srv = report["server"]
    if srv["refused"]:
        state = f"not used: {srv['refused']}"
    elif srv["pid"] is None:
        state = "none answers (runs load their model in the process)"
    else:
        models = ", ".join(srv["models"]) or "no model loaded"
        state = f"pid {srv['pid']}, mmcli {srv.get('version')}; {models}"
    section("Server", [("socket", srv["socket"]), ("state", state)])
    cfg = report["config"]
    rows = [("file", f"{cfg['path']} ({'found' if cfg['exists'] else 'none'})")]
    if cfg["error"]:
        rows.append(("error", cfg["error"].replace("\n", " ")))
    rows += [(key, json.dumps(value)) for key, value in cfg["defaults"].items()]
    rows += [(f"model.{task}", f"{m['model']} ({m['from']})") for task, m in cfg["models"].items()]
    section("Config", rows)
    env = [(name, value) for name, value in report["environment"].items() if value is not None]
    section("Environment", env or [("(none of the variables mmcli reads are set)", "")])
    return "\n".join(lines)
