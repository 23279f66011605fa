"""Thin Prefect wrappers around heft's stage functions: cache keys, retries, logging."""
