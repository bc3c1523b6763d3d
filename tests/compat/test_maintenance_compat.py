"""etcdctl's maintenance commands against a real etcd and against metastore: the same output.

alarm disarm names the alarm it cleared; move-leader to the member itself succeeds; member list
shows no peer URL metastore does not have."""

from __future__ import annotations

import json

import grpc

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as rpc

from conftest import Proc, etcdctl


def _member_id(endpoint: str) -> str:
    status = json.loads(etcdctl(endpoint, "endpoint", "status", "-w", "json").stdout)
    return f"{status[0]['Status']['header']['member_id']:x}"


def _session(endpoint: str) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each step, member IDs blanked."""
    me = _member_id(endpoint)
    out = []

    def run(*args: str) -> None:
        r = etcdctl(endpoint, *args)
        errors = "".join(line for line in r.stderr.splitlines(True) if not line.startswith("{"))  # not the
        out.append((r.returncode, r.stdout.replace(me, "<me>"), errors.replace(me, "<me>")))  # client's log

    with grpc.insecure_channel(endpoint) as ch:  # clients raise alarms with member 0, as here
        alarm = rpc.MaintenanceStub(ch).Alarm
        run("alarm", "disarm")  # nothing to disarm
        alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE), timeout=5)
        run("alarm", "list")
        run("alarm", "disarm")
        run("alarm", "list")
    run("move-leader", me)
    run("move-leader", "1234")
    return out


def test_alarm_disarm_and_move_leader_answer_as_etcd(etcd: Proc, metastore: Proc) -> None:
    ours, theirs = _session(metastore.endpoint), _session(etcd.endpoint)
    assert ours == theirs
    assert ours[2][1] == "alarm:NOSPACE \n"  # disarm names the alarm it cleared
    assert ours[4] == (0, "Leadership transferred from <me> to <me>\n", "")


def test_member_list_invents_no_peer_url(metastore: Proc) -> None:
    (member,) = json.loads(etcdctl(metastore.endpoint, "member", "list", "-w", "json").stdout)["members"]
    assert "peerURLs" not in member and member["clientURLs"] == [f"http://{metastore.endpoint}"]
