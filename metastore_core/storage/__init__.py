"""Storage backends: an ordered byte key-value store with atomic synced batches."""

from metastore_core.storage.base import Storage, StorageError, StorageView

__all__ = ["Storage", "StorageError", "StorageView"]
