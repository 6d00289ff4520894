"""Where a model's weights are: a local snapshot directory or the Hugging Face cache.

Checks never download and never import torch; `download_weights` is the one explicit fetch.
"""
from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

from models.contract import Availability
from models.registry import ModelSpec

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# (description, bytes done, bytes total or None)
ProgressCallback = Callable[[str, float, float | None], None]


def missing_packages(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def weights_problem(directory: Path) -> str | None:
    """None when the directory holds config.json and complete weights, else what is missing."""
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if not (directory / "config.json").is_file():
        return f"no config.json in {directory}"
    for index_name in WEIGHT_INDEXES:
        index = directory / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError, TypeError):
                return f"{index} is unreadable"
            missing = sorted(s for s in shards if not (directory / s).is_file())
            return f"weight shards missing in {directory}: {', '.join(missing)}" if missing else None
    if any(directory.glob("*.safetensors")) or (directory / "pytorch_model.bin").is_file():
        return None
    return f"no weights (*.safetensors) in {directory}"


def cached_snapshot(hub_id: str, revision: str | None, cache_dir: str | Path | None = None) -> Path | None:
    """The snapshot directory of hub_id@revision in the HF cache, without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json", cache_dir=cache_dir, revision=revision or "main")
    return Path(found).parent if isinstance(found, str) else None


def download_command(spec: ModelSpec) -> str:
    command = f"hf download {spec.hub_id}"
    if spec.revision and spec.revision != "main":
        command += f" --revision {spec.revision}"
    if spec.local_path:
        command += f" --local-dir {spec.local_path}"
    return command


def availability(spec: ModelSpec, packages: tuple[str, ...] = ("torch", "transformers"),
                 cache_dir: str | Path | None = None) -> Availability:
    missing = missing_packages(*packages)
    if missing:
        return Availability(available=False, status="not installed",
                            reason=f"Python packages missing: {', '.join(missing)}",
                            fix="pip install -r requirements.txt")
    if spec.local_path:
        problem = weights_problem(Path(spec.local_path))
        if problem is None:
            return Availability(available=True, status="ready", reason=f"weights in {spec.local_path}")
        fix = download_command(spec) if spec.hub_id else None
        return Availability(available=False, status="not downloaded", reason=problem, fix=fix)
    if not spec.hub_id:
        return Availability(available=False, status="not configured", reason="neither hub_id nor local_path is set",
                            fix="set hub_id (and revision) or local_path for this model in config.yaml")
    snapshot = cached_snapshot(spec.hub_id, spec.revision, cache_dir)
    problem = weights_problem(snapshot) if snapshot else f"{spec.hub_id}@{spec.revision or 'main'} is not in the cache"
    if problem is None:
        return Availability(available=True, status="ready", reason=f"weights in {snapshot}")
    return Availability(available=False, status="not downloaded", reason=problem, fix=download_command(spec))


def model_dir(spec: ModelSpec, cache_dir: str | Path | None = None) -> Path:
    """The directory to load from: local_path, else the cached snapshot. Never downloads."""
    directory: Path | None
    if spec.local_path:
        directory = Path(spec.local_path)
        problem = weights_problem(directory)
    elif spec.hub_id:
        directory = cached_snapshot(spec.hub_id, spec.revision, cache_dir)
        problem = weights_problem(directory) if directory else f"{spec.hub_id} is not in the Hugging Face cache"
    else:
        raise FileNotFoundError("neither hub_id nor local_path is set for this model")
    if problem or directory is None:
        fix = f"; fetch it with: {download_command(spec)}" if spec.hub_id else ""
        raise FileNotFoundError(f"{problem}{fix}")
    return directory


def _progress_class(callback: ProgressCallback):
    from tqdm.auto import tqdm

    class CallbackProgress(tqdm):
        def update(self, n=1):
            shown = super().update(n)
            callback(self.desc or "", float(self.n), float(self.total) if self.total else None)
            return shown

    return CallbackProgress


def download_weights(spec: ModelSpec, progress_callback: ProgressCallback | None = None,
                     cache_dir: str | Path | None = None) -> Path:
    """Fetch hub_id@revision into the HF cache (or into local_path when set); returns the directory."""
    from huggingface_hub import snapshot_download

    if not spec.hub_id:
        raise ValueError("this model has no hub_id to download from")
    path = snapshot_download(
        spec.hub_id, revision=spec.revision or "main", cache_dir=cache_dir, local_dir=spec.local_path or None,
        tqdm_class=_progress_class(progress_callback) if progress_callback else None)
    return Path(path)
