"""``fusion bench``: end-to-end latency of the real processes, baselines, transports and a report."""
