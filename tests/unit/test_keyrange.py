"""keyrange.writes decides which Txns go to the read path: it must agree with accesses()."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from metastore_core.engine.commands import mutates
from metastore_core.engine.keyrange import WRITE, accesses, writes
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

leaf_ops = st.sampled_from(
    [
        pb.RequestOp(request_range=pb.RangeRequest(key=b"a", range_end=b"b")),
        pb.RequestOp(request_put=pb.PutRequest(key=b"a", value=b"v", prev_kv=True)),
        pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a", range_end=b"z")),
        pb.RequestOp(),  # an op with no request set
    ]
)


def _txns(ops: st.SearchStrategy[pb.RequestOp]) -> st.SearchStrategy[pb.TxnRequest]:
    return st.builds(
        lambda compares, success, failure: pb.TxnRequest(compare=compares, success=success, failure=failure),
        st.lists(st.just(pb.Compare(key=b"c", target=pb.Compare.VERSION, version=1)), max_size=2),
        st.lists(ops, max_size=3),
        st.lists(ops, max_size=3),
    )


txns = st.recursive(
    _txns(leaf_ops),
    lambda inner: _txns(st.one_of(leaf_ops, inner.map(lambda t: pb.RequestOp(request_txn=t)))),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(txn=txns)
def test_writes_agrees_with_accesses(txn: pb.TxnRequest) -> None:
    assert writes(txn) == any(a.kind == WRITE for a in accesses(txn)) == mutates(txn)


def test_single_commands() -> None:
    assert writes(pb.PutRequest(key=b"k")) and writes(pb.DeleteRangeRequest(key=b"k"))
    assert not writes(pb.RangeRequest(key=b"k"))
    assert mutates(pb.PutRequest(key=b"k")) and mutates(pb.LeaseRevokeRequest(ID=1))
