"""Applications that tests/system/test_frameworks_*.py run under real servers and workers."""
