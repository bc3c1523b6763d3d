"""Multi-version store: etcd's revisions, history, tombstones and compaction."""
