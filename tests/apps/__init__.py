"""Applications that tests/test_frameworks_*.py run under real servers and workers."""
