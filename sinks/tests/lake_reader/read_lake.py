"""Independent reader of the cartstream lake (pyarrow, not the writer's code).

    python read_lake.py LAKE_DIR TOPIC

Walks LAKE_DIR/topic=TOPIC/date=*/hour=*/, applies the reader rule (skip a file whose
<partition>-<first>-<last> range lies within another file's range of the same partition in the
same directory), checks each file's Hive path against its rows' event_time, reads the kept files
and prints one JSON object: rows, counts by event_type, purchase revenue in cents per currency, per-id counts of ids seen more than once, the set of ids, the
column sets seen, how many values each optional column has, and a digest of the content (rows
sorted by event_id, every column) that does not depend on how rows are split into files.
"""
import hashlib
import json
import os
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq

NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.parquet$")


def main():
    lake, topic = sys.argv[1], sys.argv[2]
    root = os.path.join(lake, f"topic={topic}")
    kept, skipped, hive_errors = [], 0, []
    for dirpath, _, files in os.walk(root):
        ranges = []
        for f in files:
            m = NAME.match(f)
            if m:
                ranges.append((int(m[1]), int(m[2]), int(m[3]), f))
        for p, a, b, f in ranges:
            if any(q == p and c <= a and b <= d and (c, d) != (a, b) for q, c, d, _ in ranges):
                skipped += 1
            else:
                kept.append(os.path.join(dirpath, f))
    tables = []
    columns = set()
    for path in sorted(kept):
        t = pq.read_table(path)
        columns.add(tuple(t.schema.names))
        # The Hive path must match the rows' event hour.
        date = re.search(r"date=(\d{4}-\d{2}-\d{2})", path)[1]
        hour = int(re.search(r"hour=(\d{2})", path)[1])
        if "event_time" in t.schema.names:
            for ts in t.column("event_time").to_pylist():
                if ts.strftime("%Y-%m-%d") != date or ts.hour != hour:
                    hive_errors.append(path)
                    break
        tables.append(t)
    if tables:
        table = pa.concat_tables(tables, promote_options="default")
    else:
        table = pa.table({"event_id": pa.array([], pa.string())})
    ids = table.column("event_id").to_pylist()
    counts = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    optional = {}
    for name in table.schema.names:
        optional[name] = len(ids) - table.column(name).null_count
    rows = table.to_pylist()
    by_type, revenue_cents = {}, {}
    for r in rows:
        t = r.get("event_type")
        by_type[t] = by_type.get(t, 0) + 1
        if t == "purchase":
            cur = r["currency"].strip().upper()
            revenue_cents[cur] = revenue_cents.get(cur, 0) + round(r["price"] * 100) * r["quantity"]
    rows.sort(key=lambda r: r["event_id"])
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps({k: str(r[k]) for k in sorted(r)}, sort_keys=True).encode())
    compression = set()
    for path in kept[:20]:
        md = pq.ParquetFile(path).metadata
        for rg in range(md.num_row_groups):
            for c in range(md.num_columns):
                compression.add(md.row_group(rg).column(c).compression)
    print(json.dumps({
        "files_kept": len(kept),
        "files_skipped": skipped,
        "rows": len(ids),
        "duplicates": {k: v for k, v in counts.items() if v > 1},
        "ids": sorted(counts),
        "column_sets": sorted(list(c) for c in columns),
        "non_null": optional,
        "digest": digest.hexdigest(),
        "hive_errors": hive_errors,
        "compression": sorted(compression),
        "by_type": by_type,
        "revenue_cents": revenue_cents,
    }))


if __name__ == "__main__":
    main()
