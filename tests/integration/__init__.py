"""Integration tier: the tracker against FakeEnso in this process, the CLI, the docs."""
