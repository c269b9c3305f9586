"""Training checkpoints: safetensors weights + trainer state, written atomically, verified on load.

A checkpoint is a directory ``<out_dir>/checkpoints/step_00001000/`` holding

    model.safetensors   the model's state dict
    state.safetensors   tensors of the trainer state (AdamW moments and steps, RNG states)
    state.json          everything else: step, data position, history, config, optimizer
                        hyper-parameters, and the sha256 of both safetensors files

It is written into a temporary directory beside it, every file fsynced, then renamed into place with
``os.replace``: a crash or an error mid-write leaves the previous checkpoints untouched and never a
half-written ``step_*`` directory. Loading checks the checksums, so truncation or corruption is a
:class:`CheckpointError` naming the file. Used by :mod:`subq.train.trainer` (``subq train --resume``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the run resuming from it."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``weights`` and ``tensors`` on CPU, ``state`` as read from ``state.json``."""

    path: Path
    weights: dict[str, Tensor]
    tensors: dict[str, Tensor]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return self.state["step"]


def checkpoint_dir(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first (temporary ones are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint directory under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    weights: dict[str, Tensor],
    tensors: dict[str, Tensor],
    state: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write ``root/step_<step>/`` atomically and return its path.

    Args:
        weights: the model's state dict.
        tensors: other tensors to keep (optimizer moments, RNG states), referenced from ``state``.
        state: JSON-serializable trainer state; ``step``, ``format_version`` and the checksums are added.
        keep: when given, delete all but the newest ``keep`` checkpoints once this one is in place.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_dir(step)
    if final.exists():
        raise FileExistsError(f"checkpoint {final} already exists")
    blobs = {
        WEIGHTS_FILE: safetensors.torch.save(_cpu(weights), metadata={"step": str(step)}),
        TENSORS_FILE: safetensors.torch.save(_cpu(tensors), metadata={"step": str(step)}),
    }
    state = {
        **state,
        "format_version": FORMAT_VERSION,
        "step": step,
        "files": {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()},
    }
    blobs[STATE_FILE] = json.dumps(state, indent=1).encode()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        for name, blob in blobs.items():
            _write_synced(tmp / name, blob)
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
    return final


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint directory; any problem is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    state_path = path / STATE_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: missing (the checkpoint is incomplete)")
    try:
        state = json.loads(state_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_path}: not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path}: expected a JSON object, got {type(state).__name__}")
    for key in ("format_version", "step", "files"):
        if key not in state:
            raise CheckpointError(f"{state_path}: missing key {key!r}")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{state_path}: format_version {state['format_version']} is not the supported {FORMAT_VERSION}"
        )
    loaded = {}
    for name in (WEIGHTS_FILE, TENSORS_FILE):
        file = path / name
        if name not in state["files"]:
            raise CheckpointError(f"{state_path}: no checksum recorded for {name}")
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        blob = file.read_bytes()
        if hashlib.sha256(blob).hexdigest() != state["files"][name]:
            raise CheckpointError(f"{file}: checksum mismatch; the file is corrupt or changed after saving")
        try:
            loaded[name] = safetensors.torch.load(blob)
        except SafetensorError as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    return Checkpoint(path, loaded[WEIGHTS_FILE], loaded[TENSORS_FILE], state)


# ---- optimizer state <-> JSON + tensors ------------------------------------------------------------------


def optimizer_state_to_json(
    state_dict: dict[str, Any], prefix: str = "optim"
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Split ``Optimizer.state_dict()`` into a JSON-able dict and named tensors (``optim.<param>.<name>``)."""
    tensors: dict[str, Tensor] = {}
    state = {}
    for pid, entry in state_dict["state"].items():
        out = {}
        for name, value in entry.items():
            if isinstance(value, Tensor):
                key = f"{prefix}.{pid}.{name}"
                tensors[key] = value
                out[name] = {"tensor": key}
            else:
                out[name] = value
        state[str(pid)] = out
    return {"state": state, "param_groups": state_dict["param_groups"]}, tensors


def optimizer_state_from_json(data: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_json` (JSON lists in ``param_groups`` become tuples)."""
    state = {
        int(pid): {
            name: tensors[value["tensor"]] if isinstance(value, dict) and "tensor" in value else value
            for name, value in entry.items()
        }
        for pid, entry in data["state"].items()
    }
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in data["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---- files --------------------------------------------------------------------------------------------


def _cpu(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it before returning."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (renames, new files); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def torch_rng_tensors() -> dict[str, Tensor]:
    """The global torch RNG states: CPU, and every CUDA device when CUDA is initialized."""
    out = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_torch_rng(tensors: dict[str, Tensor]) -> None:
    """Inverse of :func:`torch_rng_tensors` (CUDA states only where CUDA is available)."""
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors, key=_cuda_index) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _cuda_index(key: str) -> int:
    return int(key.rsplit(".", 1)[1]) if key.startswith("rng.cuda.") else -1
