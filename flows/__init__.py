"""Prefect flows composing heft's stage tasks."""
