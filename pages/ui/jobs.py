"""Batch jobs running inside the server: one thread per job, outliving the page run that started it.

The job itself is rows in the store; this registry only holds what a running thread knows beyond
them (its stop switch, its speed). A server restart loses the threads, not the job: the Batch page
offers to resume it.
"""
from __future__ import annotations

import streamlit as st

from utils.engine.loader import Loader
from utils.jobs.background import JobThread, JobThreads
from utils.store import Store


@st.cache_resource(show_spinner=False)
def job_threads() -> JobThreads:
    """Every job thread this server started, by job id (one server process, many sessions)."""
    return JobThreads()


def start_job(store: Store, job_id: int, loader: Loader, workers: int | None) -> JobThread:
    """Start (or resume) a job unless a thread of this server already runs it."""
    return job_threads().start(store, job_id, loader, workers)
