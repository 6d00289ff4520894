"""The results store (SQLite, WAL): page results, batch jobs, kept source documents."""
from utils.store.jobs import Job, JobCounts, JobDocument, JobPage
from utils.store.schema import SchemaError
from utils.store.store import ResultSummary, Store, StoredResult, store_path

__all__ = ["Job", "JobCounts", "JobDocument", "JobPage", "ResultSummary", "SchemaError", "Store", "StoredResult",
           "store_path"]
