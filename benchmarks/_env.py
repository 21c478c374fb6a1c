"""What a result was measured on: device, versions, commit, hash of the kernels."""
import datetime
import hashlib
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import List, Optional

import torch

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> Optional[bytes]:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def commit() -> str:
    """HEAD, with "-dirty" when csrc/ or se_fused/ has uncommitted changes; "unknown" without one."""
    head = _git("rev-parse", "--verify", "HEAD")
    if not head:
        return "unknown"
    dirty = _git("status", "--porcelain", "--", "csrc", "se_fused")
    return head.decode().strip() + ("-dirty" if dirty else "")


def tracked_files(folder: str) -> List[str]:
    out = _git("ls-files", "-z", "--", folder)
    return sorted(p.decode() for p in out.split(b"\0") if p) if out else []


def csrc_sha256() -> str:
    """sha256 over every git-tracked file under csrc/, in sorted path order, of:
    path bytes, NUL, file bytes, NUL."""
    h = hashlib.sha256()
    for path in tracked_files("csrc"):
        h.update(path.encode() + b"\0")
        h.update((REPO / path).read_bytes() + b"\0")
    return h.hexdigest()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def thp_alloc(device: torch.device) -> bool:
    """PyTorch's CPU allocator backs large tensors with transparent huge pages
    (THP_MEM_ALLOC_ENABLE=1). Then a fresh output no longer pays a page fault
    every 4 KiB, which on some machines costs more than the copy itself."""
    return device.type == "cpu" and os.environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1"


def device_slug(device: torch.device, name: str) -> str:
    """e.g. "cpu-amd-epyc", "cpu-amd-epyc-thp", "nvidia-h100-80gb-hbm3"."""
    slug = slugify(name)
    slug = slug if device.type == "cuda" or slug.startswith("cpu") else f"cpu-{slug}"
    return f"{slug}-thp" if thp_alloc(device) else slug


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def busy_warning(load_before: Optional[float], load_after: Optional[float]) -> Optional[str]:
    """A note when other processes competed for the CPU cores the timings ran on."""
    cores = os.cpu_count() or 1
    spare = cores - torch.get_num_threads()
    loads = [x for x in (load_before, load_after) if x is not None]
    # This benchmark itself contributes about its thread count to the load.
    if loads and max(loads) - torch.get_num_threads() > spare + 0.5:
        return (f"the machine was busy (1-min load {', '.join(map(str, loads))} on {cores} cores, "
                f"{torch.get_num_threads()} torch threads): CPU timings are unreliable, "
                "multi-threaded ones especially")
    return None


def environment(device: torch.device) -> dict:
    name = device_name(device)
    env = {
        "device": name,
        "device_slug": device_slug(device, name),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": commit(),
        "csrc_sha256": csrc_sha256(),
        "csrc_files": len(tracked_files("csrc")),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "thp_alloc": thp_alloc(device),
        "cpu_cores": os.cpu_count(),
        "load_before": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_GiB"] = round(props.total_memory / 2**30, 1)
        env["l2_MiB"] = round(props.L2_cache_size / 2**20, 1)
    return env
