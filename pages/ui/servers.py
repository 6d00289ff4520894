"""Health of the models served by a vLLM (OpenAI-compatible) server, for the sidebar and System page."""
from __future__ import annotations

import streamlit as st

from pages.ui.common import get_loader
from utils.engine.loader import ModelUnavailable, ServerHealth


def _health(model: str) -> ServerHealth | str | None:
    """The server's health, a one-line reason it cannot be asked, or None for a model that runs here."""
    try:
        return get_loader().server_health(model)
    except ModelUnavailable as exc:
        return str(exc)


def health_caption(model: str) -> None:
    """One line under the model picker: the server answers and lists the model (with its latency), or why not."""
    health = _health(model)
    if health is None:
        return
    if isinstance(health, str):
        st.error(health)
    elif health.ok:
        st.caption(f":material/cloud_done: {health.summary}")
    else:
        st.error(f"Server not usable: {health.summary}")


def health_table() -> None:
    """Every served model's replicas: reachable, model listed, latency, error."""
    loader = get_loader()
    rows: dict[str, list] = {"model": [], "server": [], "reachable": [], "model listed": [], "latency ms": [],
                             "error": []}
    for name in loader.settings.models:
        health = _health(name)
        if health is None:
            continue
        if isinstance(health, str):
            rows["model"].append(name)
            rows["server"].append("")
            rows["reachable"].append(False)
            rows["model listed"].append(False)
            rows["latency ms"].append(None)
            rows["error"].append(health)
            continue
        for replica in health.replicas:
            rows["model"].append(name)
            rows["server"].append(replica.url)
            rows["reachable"].append(replica.reachable)
            rows["model listed"].append(replica.model_listed)
            rows["latency ms"].append(round(replica.latency_s * 1000) if replica.latency_s is not None else None)
            rows["error"].append(replica.error or "")
    if not rows["model"]:
        return
    st.subheader("Models on servers")
    st.dataframe(rows, hide_index=True)
