"""Attach, reload, detach and inspect pipelines on interfaces."""
