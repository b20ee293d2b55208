"""System tier: real servers and workers, kill -9, signals, scale, packaging."""
