"""Batch jobs: inputs (files, folders, zips), the resumable job engine, and the job's output files."""
