"""Runs one of the lake's SQL queries (sql/*.sql) with DuckDB and prints its result.

    python lake_query.py [--lake DIR] [--prefix P] [--format table|csv|json] NAME
    python lake_query.py --list

Before the query it defines the star schema's views over the lake's Parquet files:

    fact_events       topic=<P>purchases.enriched/date=*/hour=*/   enriched events
    fact_sessions     topic=<P>sessions.closed/date=*/hour=*/      closed sessions
    fact_kpi_windows  topic=<P>kpi.windows/date=*/hour=*/          final KPI windows
    fact_alerts       topic=<P>alerts.raised/date=*/hour=*/        alerts
    dim_product       snapshot=<P>catalog.products/date=*/         daily product snapshots
    dim_user          snapshot=<P>catalog.users/date=*/            daily user snapshots

Each view has the Hive partition columns `date` (DATE: the UTC date of the row's event time, or
of the snapshot) and, for facts, `hour` (0-23). The views list the files themselves and apply the
lake's reader rule (a file whose offset range lies within another file's range of the same
partition in the same directory is skipped: a compaction was interrupted after its merged upload),
so a half-done compaction never doubles a row. Columns are merged by name across files
(union_by_name), so files written before and after a schema change read together. Times are UTC.

A table with no files yet has no view: a query that uses it fails with a message saying so.
"""
import argparse
import csv
import datetime
import decimal
import json
import os
import re
import sys

import duckdb

SQL_DIR = os.path.dirname(os.path.abspath(__file__))
NAME = re.compile(r"^(\d+)-(\d+)-(\d+)\.parquet$")
FACTS = {
    "fact_events": "purchases.enriched",
    "fact_sessions": "sessions.closed",
    "fact_kpi_windows": "kpi.windows",
    "fact_alerts": "alerts.raised",
}
DIMS = {
    "dim_product": "catalog.products",
    "dim_user": "catalog.users",
}


def queries():
    out = {}
    for f in sorted(os.listdir(SQL_DIR)):
        if f.endswith(".sql"):
            with open(os.path.join(SQL_DIR, f)) as fh:
                text = fh.read()
            doc = " ".join(
                line[2:].strip() for line in text.splitlines() if line.startswith("--")
            )
            out[f[:-4]] = (text, doc)
    return out


def fact_files(root):
    """Parquet files under root, the reader rule applied."""
    kept = []
    for dirpath, _, files in os.walk(root):
        ranges = []
        for f in files:
            m = NAME.match(f)
            if m:
                ranges.append((int(m[1]), int(m[2]), int(m[3]), f))
        for p, a, b, f in ranges:
            if not any(q == p and c <= a and b <= d and (c, d) != (a, b) for q, c, d, _ in ranges):
                kept.append(os.path.join(dirpath, f))
    return sorted(kept)


def dim_files(root):
    kept = []
    for dirpath, _, files in os.walk(root):
        kept += [os.path.join(dirpath, f) for f in files if f.endswith(".parquet")]
    return sorted(kept)


def sql_list(files):
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def define_views(con, lake, prefix):
    defined = {}
    for view, topic in FACTS.items():
        files = fact_files(os.path.join(lake, f"topic={prefix}{topic}"))
        if files:
            con.execute(
                f"CREATE VIEW {view} AS SELECT * EXCLUDE (topic) FROM read_parquet({sql_list(files)}, "
                "hive_partitioning = true, union_by_name = true)"
            )
        defined[view] = len(files)
    for view, topic in DIMS.items():
        files = dim_files(os.path.join(lake, f"snapshot={prefix}{topic}"))
        if files:
            con.execute(
                f"CREATE VIEW {view} AS SELECT * EXCLUDE (snapshot) FROM read_parquet({sql_list(files)}, "
                "hive_partitioning = true, union_by_name = true)"
            )
        defined[view] = len(files)
    return defined


def plain(v):
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, datetime.timedelta):
        return v.total_seconds()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def show(columns, rows, fmt):
    if fmt == "json":
        print(json.dumps({"columns": columns, "rows": [[plain(v) for v in r] for r in rows]}))
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if v is None else plain(v) for v in r])
        return
    cells = [[("" if v is None else (f"{v:.4f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(plain(v)))) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(widths[i]) for i, c in enumerate(columns)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.rjust(widths[i]) if rows and isinstance(rows[0][i], (int, float)) else v.ljust(widths[i]) for i, v in enumerate(r)))
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="query name: a file sql/NAME.sql")
    ap.add_argument("--lake", default=".stack/lake", help="lake directory (default .stack/lake)")
    ap.add_argument("--prefix", default="", help="topic prefix of the pipeline that wrote the lake")
    ap.add_argument("--format", choices=["table", "csv", "json"], default="table")
    ap.add_argument("--list", action="store_true", help="list the queries and exit")
    a = ap.parse_args()
    qs = queries()
    if a.list or not a.name:
        for n, (_, doc) in qs.items():
            print(f"{n:<28} {doc}")
        return 0 if a.list else 2
    if a.name not in qs:
        print(f"lake-query: no query {a.name!r} (one of: {', '.join(qs)})", file=sys.stderr)
        return 2
    lake = a.lake[len("file://"):] if a.lake.startswith("file://") else a.lake
    if "://" in lake:
        print(f"lake-query: {a.lake}: only a local lake directory is supported", file=sys.stderr)
        return 2
    if not os.path.isdir(lake):
        print(f"lake-query: no lake directory {lake}", file=sys.stderr)
        return 2
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    defined = define_views(con, lake, a.prefix)
    text = qs[a.name][0]
    missing = [v for v, n in defined.items() if n == 0 and re.search(rf"\b{v}\b", text)]
    if missing:
        print(f"lake-query: {a.name} reads {', '.join(missing)}, which has no files in {lake} yet", file=sys.stderr)
        return 3
    cur = con.execute(text)
    columns = [d[0] for d in cur.description]
    show(columns, cur.fetchall(), a.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
