"""bbolt, the B+tree file etcd keeps its backend in: a reader that trusts nothing and a streaming
writer (format.py says the format). No dependency on etcd's layout: see storage/etcdlayout.py."""
