"""Prefect flows, one module per lifecycle stage; they only orchestrate tasks."""
