"""Benchmarks: metastore side by side with etcd and a do-nothing floor (`python -m benchmarks.run`)."""
