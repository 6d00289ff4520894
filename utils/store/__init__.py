"""The results store (SQLite, WAL): page results, batch jobs, chats, field extractions, kept source documents."""
from utils.store.chats import Chat, ChatTurn
from utils.store.extractions import StoredExtraction
from utils.store.jobs import Job, JobCounts, JobDocument, JobPage
from utils.store.schema import SchemaError
from utils.store.store import ResultSummary, SavedWorkspace, Store, StoredResult, store_path

__all__ = ["Chat", "ChatTurn", "Job", "JobCounts", "JobDocument", "JobPage", "ResultSummary", "SavedWorkspace",
           "SchemaError", "Store", "StoredExtraction", "StoredResult", "store_path"]
