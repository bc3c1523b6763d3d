"""The I/O shell: gRPC services, group commit, lifecycle. The engine stays pure."""
