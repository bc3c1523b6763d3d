"""The servicers: one per proto service, each taking domain requests with a `Call`.

They return domain replies or raise domain errors and never see a transport;
server/catalog.py lists them, server/rpc.py binds them to gRPC.
"""
