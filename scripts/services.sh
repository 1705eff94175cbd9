#!/usr/bin/env bash
# cartstream services as background processes of the local stack (for the demo and manual runs).
#
#   scripts/services.sh start NAME METRICS_PORT -- CMD [ARGS..]   start CMD unless NAME runs; logs and pid in
#                                                                 .stack/services/, Prometheus scrapes it
#   scripts/services.sh stop [NAME..]                             SIGTERM every service (or the named ones; a name
#                                                                 ending in * is a prefix), then KILL after 30 s
#   scripts/services.sh status [NAME..]                           one line per service
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${STACK_DIR:-$ROOT/.stack}/services
TARGETS=${STACK_DIR:-$ROOT/.stack}/prometheus/targets/cartstream.json
mkdir -p "$DIR" "$(dirname "$TARGETS")"

alive() { [[ -f $DIR/$1.pid ]] && kill -0 "$(<"$DIR/$1.pid")" 2>/dev/null; }

selected() { # name [patterns..]: no pattern selects all; "x*" is a prefix
  local name=$1 p; shift
  (($#)) || return 0
  for p in "$@"; do
    [[ $p == *'*' && $name == "${p%'*'}"* ]] && return 0
    [[ $name == "$p" ]] && return 0
  done
  return 1
}

write_targets() { # every service with a metrics port, as Prometheus file_sd JSON
  local first=1
  { printf '['
    for f in "$DIR"/*.port; do
      [[ -e $f ]] || continue
      local name; name=$(basename "$f" .port)
      alive "$name" || continue
      ((first)) || printf ','
      first=0
      printf '{"targets":["127.0.0.1:%s"],"labels":{"job":"cartstream-%s","service":"%s"}}' "$(<"$f")" "$name" "$name"
    done
    printf ']\n'; } > "$TARGETS.$$.tmp" && mv -f "$TARGETS.$$.tmp" "$TARGETS"
}

case ${1:-} in
  start)
    name=$2 port=$3; shift 3; [[ ${1:-} == -- ]] && shift
    if alive "$name"; then echo "$name already running (pid $(<"$DIR/$name.pid"))"; exit 0; fi
    nohup "$@" --metrics-addr "127.0.0.1:$port" >"$DIR/$name.log" 2>&1 &
    echo $! >"$DIR/$name.pid"; echo "$port" >"$DIR/$name.port"
    for _ in $(seq 100); do
      curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/readyz" 2>/dev/null && break
      alive "$name" || { echo "$name exited at start; its log:" >&2; tail -20 "$DIR/$name.log" >&2; exit 1; }
      sleep 0.3
    done
    write_targets
    echo "$name running (pid $(<"$DIR/$name.pid"), metrics http://127.0.0.1:$port/metrics, log ${DIR#"$ROOT"/}/$name.log)"
    ;;
  stop)
    shift
    for f in "$DIR"/*.pid; do
      [[ -e $f ]] || continue
      name=$(basename "$f" .pid) pid=$(<"$f")
      selected "$name" "$@" || continue
      if kill -TERM "$pid" 2>/dev/null; then
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
        echo "stopped $name"
      fi
      rm -f "$f"
    done
    write_targets
    ;;
  status)
    shift
    for f in "$DIR"/*.pid; do
      [[ -e $f ]] || continue
      name=$(basename "$f" .pid)
      selected "$name" "$@" || continue
      if alive "$name"; then echo "$name up (pid $(<"$f"))"; else echo "$name down"; fi
    done
    ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
