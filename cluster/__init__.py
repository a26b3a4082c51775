"""Cluster: the `iipa` command, the end-to-end demo, launchers and benchmarks."""
