"""Sidebar controls that make a VLM available: download its weights, or point at a local snapshot.

A snapshot folder chosen here is saved in the local settings file (data/local_settings.json, not
config.yaml) and applied every time the app starts, until it is changed.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import streamlit as st

from models.vlm.weights import download_weights, weights_problem
from pages.ui.common import get_loader, refresh_models
from utils import local_settings
from utils.engine.loader import ModelStatus
from utils.messages import one_line


def _download(name: str) -> None:
    spec = get_loader().settings.model(name)
    bar = st.progress(0.0, text=f"Downloading {spec.hub_id}…")

    def progress(description: str, done: float, total: float | None) -> None:
        if total:
            bar.progress(min(done / total, 1.0), text=f"{description or spec.hub_id}: "
                         f"{done / 1e9:.2f} / {total / 1e9:.2f} GB")

    try:
        download_weights(spec, progress)
    except Exception as exc:  # no network, disk full, gated repo: one line for the user
        bar.empty()
        st.error(f"Download of {spec.hub_id} failed: {one_line(exc)}")
        return
    bar.empty()
    refresh_models()
    st.rerun()


def weights_controls(status: ModelStatus) -> None:
    """Shown under the model picker for a model whose weights are not found."""
    spec = get_loader().settings.model(status.name)
    if spec.hub_id is None or status.availability.status != "not downloaded":
        return
    if st.button(f"Download {spec.hub_id}", key=f"download_{status.name}",
                 help="Several GB from huggingface.co into the Hugging Face cache"):
        _download(status.name)
    with st.form(f"local_path_{status.name}", border=False):
        folder = st.text_input("…or a local snapshot folder", spec.local_path or "",
                               placeholder=snapshot_placeholder(spec.hub_id),
                               help="Kept in data/local_settings.json and used again after a restart")
        if st.form_submit_button("Use this folder") and folder.strip():
            use_folder(status.name, folder)


def snapshot_placeholder(hub_id: str) -> str:
    """Where a snapshot of this model might be: named after the model itself (Qwen3-VL-2B-Instruct)."""
    return f"/models/{PurePosixPath(hub_id).name}"


def use_folder(model: str, folder: str) -> None:
    path = Path(folder.strip()).expanduser()
    problem = weights_problem(path)
    if problem:
        st.error(problem)
        return
    resolved = str(path.resolve())
    get_loader().set_model_path(model, resolved)
    try:
        local_settings.set_model_path(model, resolved)
    except OSError as exc:  # used now, but not remembered: say so
        st.warning(f"The folder is used until the app stops, but could not be saved for the next start "
                   f"({one_line(exc)}).")
        return
    refresh_models()
    st.rerun()
