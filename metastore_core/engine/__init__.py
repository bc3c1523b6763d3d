"""The engine: request semantics over the MVCC store (no gRPC, no asyncio)."""
