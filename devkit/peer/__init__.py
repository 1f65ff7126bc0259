"""Peers the bench measures the worker against (what a team would run instead)."""
