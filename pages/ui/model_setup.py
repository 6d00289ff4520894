"""Sidebar controls that make a VLM available: download its weights, or point at a local snapshot."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from models.vlm.weights import download_weights, weights_problem
from pages.ui.common import get_loader, model_catalog
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
    model_catalog.clear()
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
                               placeholder="/models/Qwen2-VL-2B-Instruct")
        if st.form_submit_button("Use this folder") and folder.strip():
            problem = weights_problem(Path(folder.strip()).expanduser())
            if problem:
                st.error(problem)
            else:
                get_loader().set_model_path(status.name, str(Path(folder.strip()).expanduser().resolve()))
                model_catalog.clear()
                st.rerun()
