"""Orchestration: the coordinator's round loop, the worker's compute loop, and local launching."""
