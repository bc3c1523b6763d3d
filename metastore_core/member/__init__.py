"""The member: the write path, its loops and its failure policy (asyncio, never grpc).

Everything outside this package talks to a member through `node.Node` only.
"""
