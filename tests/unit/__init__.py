"""Unit tier: in-process, no subprocess, no fixed sleep; `make unit` runs it."""
