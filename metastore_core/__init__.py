"""metastore: an etcd v3 compatible metadata store on LevelDB."""

__version__ = "0.1.0"
