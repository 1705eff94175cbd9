"""CQL smoke check used by `scripts/stack.sh smoke`: a real driver round trip against the local Cassandra.

Connects to 127.0.0.1:<port>, reads system.local's release_version, creates a throw-away keyspace and table,
writes and reads one row, and drops the keyspace again. Exit code 0 on success.
"""
import sys
import uuid

from cassandra.cluster import Cluster

port = int(sys.argv[1]) if len(sys.argv) > 1 else 9042
cluster = Cluster(["127.0.0.1"], port=port)
try:
    session = cluster.connect()
    version = session.execute("select release_version from system.local").one().release_version
    ks = "smoke_" + uuid.uuid4().hex[:12]
    session.execute(
        f"create keyspace {ks} with replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    session.execute(f"create table {ks}.t (id text primary key, n int)")
    session.execute(f"insert into {ks}.t (id, n) values ('a', 1)")
    rows = list(session.execute(f"select id, n from {ks}.t"))
    session.execute(f"drop keyspace {ks}")
    assert [(r.id, r.n) for r in rows] == [("a", 1)], rows
    print(f"release_version={version} protocol=v{cluster.protocol_version} roundtrip ok")
finally:
    cluster.shutdown()
