#!/usr/bin/env bash
# The local stack for one checkout: Apache Kafka (KRaft, single node) and RabbitMQ.
# Usage: stack/stack.sh up|down|status|logs|clean|fetch
# All state, logs and pid files live under $STACK_DIR (default: <checkout>/.stack).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$ROOT/.stack}
KAFKA_DIR=$STACK_DIR/kafka
RABBIT_DIR=$STACK_DIR/rabbitmq
# Ports and node name can be moved so that a second checkout runs its own stack beside this one
# (point the clients at it with TROVEMETER_KAFKA_BOOTSTRAP and TROVEMETER_RABBIT_URL).
KAFKA_PORT=${TROVEMETER_STACK_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${TROVEMETER_STACK_KAFKA_CONTROLLER_PORT:-9093}
RABBIT_PORT=${TROVEMETER_STACK_RABBIT_PORT:-5672}
RABBIT_DIST_PORT=${TROVEMETER_STACK_RABBIT_DIST_PORT:-25672}
RABBIT_NODE=${TROVEMETER_STACK_RABBIT_NODE:-trovemeter@localhost}
KAFKA_HEAP=${TROVEMETER_KAFKA_HEAP:-512m}
START_TIMEOUT=${TROVEMETER_STACK_TIMEOUT:-120}
RABBIT_BIN=/usr/lib/rabbitmq/bin

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_owner() {
  ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\("[^"]*",pid=[0-9]*\).*/\1/p' | head -1
}

require_free_port() { # port, what
  if port_open "$1"; then
    die "port $1 (needed for $2) is already taken by ${3:-$(port_owner "$1")}; stop that process or free the port"
  fi
}

wait_until() { # seconds, description, log, command...
  local limit=$1 what=$2 log=$3; shift 3
  local waited=0
  until "$@"; do
    if [ "$waited" -ge "$limit" ]; then
      die "$what did not accept clients within ${limit}s; see $log"
    fi
    sleep 1; waited=$((waited + 1))
  done
}

# ---------------------------------------------------------------- Kafka
kafka_fetch() {
  command -v java >/dev/null || die "Java is missing: install a JDK 17+ (e.g. apt-get install openjdk-17-jre-headless)"
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/ *java.specification.version = //p')
  [ "${major%%.*}" -ge 17 ] 2>/dev/null || die "Kafka 4 needs Java 17+, found Java ${major:-unknown} at $(command -v java)"
  if [ -f "$KAFKA_DIR/libs/.complete" ] && [ "$KAFKA_DIR/libs/.complete" -nt "$ROOT/stack/kafka/pom.xml" ]; then
    return
  fi
  command -v mvn >/dev/null || die "Maven is missing: install it (apt-get install maven); it fetches the Kafka jars"
  say "resolving Apache Kafka jars with Maven (cached in ~/.m2 after the first time)"
  rm -rf "$KAFKA_DIR/libs"; mkdir -p "$KAFKA_DIR/libs"
  mvn -B -q -f "$ROOT/stack/kafka/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_DIR/libs" >"$KAFKA_DIR/maven.log" 2>&1 \
    || die "Maven could not resolve the Kafka jars; see $KAFKA_DIR/maven.log"
  touch "$KAFKA_DIR/libs/.complete"
}

kafka_configure() {
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  cat >"$KAFKA_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DIR/data
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
message.max.bytes=4194304
PROPS
  cat >"$KAFKA_DIR/log4j2.properties" <<PROPS
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $KAFKA_DIR/logs/server.log
appender.file.filePattern = $KAFKA_DIR/logs/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
PROPS
}

kafka_java_args() {
  JAVA_ARGS=(-Xms256m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
             -Djava.awt.headless=true
             "-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.properties"
             -cp "$KAFKA_DIR/libs/*")
}

kafka_java() { kafka_java_args; java "${JAVA_ARGS[@]}" "$@"; }

kafka_up() {
  if pid_alive "$KAFKA_DIR/kafka.pid"; then
    wait_until "$START_TIMEOUT" "Kafka on 127.0.0.1:$KAFKA_PORT" "$KAFKA_DIR/logs/server.log" port_open "$KAFKA_PORT"
    say "Kafka already running (pid $(cat "$KAFKA_DIR/kafka.pid")) on 127.0.0.1:$KAFKA_PORT"
    return
  fi
  require_free_port "$KAFKA_PORT" "Kafka"
  require_free_port "$KAFKA_CONTROLLER_PORT" "the Kafka controller"
  kafka_fetch
  kafka_configure
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$KAFKA_DIR/logs/format.log")
    kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" \
      >>"$KAFKA_DIR/logs/format.log" 2>&1 || die "formatting Kafka storage failed; see $KAFKA_DIR/logs/format.log"
    echo "$cluster_id" >"$KAFKA_DIR/cluster.id"
  fi
  kafka_java_args
  nohup java "${JAVA_ARGS[@]}" kafka.Kafka "$KAFKA_DIR/server.properties" \
    >"$KAFKA_DIR/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$KAFKA_DIR/kafka.pid"
  local waited=0
  until port_open "$KAFKA_PORT"; do
    pid_alive "$KAFKA_DIR/kafka.pid" || die "Kafka exited during start-up; see $KAFKA_DIR/logs/stdout.log and $KAFKA_DIR/logs/server.log"
    [ "$waited" -lt "$START_TIMEOUT" ] || die "Kafka did not accept clients on 127.0.0.1:$KAFKA_PORT within ${START_TIMEOUT}s; see $KAFKA_DIR/logs/server.log"
    sleep 1; waited=$((waited + 1))
  done
  say "Kafka up on 127.0.0.1:$KAFKA_PORT (pid $(cat "$KAFKA_DIR/kafka.pid"), ${waited}s)"
}

# ---------------------------------------------------------------- RabbitMQ
rabbit_env() {
  export HOME=$RABBIT_DIR  # the Erlang cookie lives here, shared by server and rabbitmqctl
  export RABBITMQ_NODENAME=$RABBIT_NODE
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$RABBIT_PORT
  export RABBITMQ_DIST_PORT=$RABBIT_DIST_PORT
  export RABBITMQ_MNESIA_BASE=$RABBIT_DIR/mnesia
  export RABBITMQ_LOG_BASE=$RABBIT_DIR/log
  export RABBITMQ_PID_FILE=$RABBIT_DIR/rabbitmq.pid
  export RABBITMQ_ENABLED_PLUGINS_FILE=$RABBIT_DIR/enabled_plugins
  export RABBITMQ_CONFIG_FILE=$RABBIT_DIR/rabbitmq
  export RABBITMQ_CONF_ENV_FILE=$RABBIT_DIR/rabbitmq-env.conf
  export RABBITMQ_ADVANCED_CONFIG_FILE=$RABBIT_DIR/advanced.config
  export ERL_EPMD_ADDRESS=127.0.0.1
}

rabbit_install() {
  [ -x "$RABBIT_BIN/rabbitmq-server" ] && return
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  [ -z "$sudo" ] || command -v sudo >/dev/null || die "rabbitmq-server is not installed and installing it needs root (apt-get install rabbitmq-server)"
  say "installing Debian's rabbitmq-server with apt-get"
  mkdir -p "$STACK_DIR"
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server; } \
    >"$STACK_DIR/apt.log" 2>&1 || die "apt-get install rabbitmq-server failed; see $STACK_DIR/apt.log"
  # Debian starts a system-wide node on install where services may start; ours is a separate node.
  if command -v service >/dev/null; then $sudo service rabbitmq-server stop >/dev/null 2>&1 || true; fi
}

rabbit_ready() { "$RABBIT_BIN/rabbitmqctl" -q -n "$RABBIT_NODE" status >/dev/null 2>&1 && port_open "$RABBIT_PORT"; }

rabbit_up() {
  rabbit_install
  mkdir -p "$RABBIT_DIR/log" "$RABBIT_DIR/mnesia"
  rabbit_env
  if pid_alive "$RABBIT_DIR/server.pid"; then
    wait_until "$START_TIMEOUT" "RabbitMQ on 127.0.0.1:$RABBIT_PORT" "$RABBIT_DIR/log" rabbit_ready
    say "RabbitMQ already running (pid $(cat "$RABBIT_DIR/server.pid")) on 127.0.0.1:$RABBIT_PORT"
    return
  fi
  require_free_port "$RABBIT_PORT" "RabbitMQ"
  require_free_port "$RABBIT_DIST_PORT" "RabbitMQ's Erlang distribution"
  : >"$RABBIT_DIR/enabled_plugins.tmp"; echo '[].' >"$RABBIT_DIR/enabled_plugins"; rm -f "$RABBIT_DIR/enabled_plugins.tmp"
  : >"$RABBIT_DIR/rabbitmq-env.conf"
  echo '[].' >"$RABBIT_DIR/advanced.config"
  cat >"$RABBIT_DIR/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$RABBIT_PORT
loopback_users.guest = true
disk_free_limit.absolute = 200MB
vm_memory_high_watermark.relative = 0.2
log.console = false
log.file.level = info
CONF
  [ -f "$RABBIT_DIR/.erlang.cookie" ] || { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RABBIT_DIR/.erlang.cookie"; chmod 400 "$RABBIT_DIR/.erlang.cookie"; }
  nohup "$RABBIT_BIN/rabbitmq-server" >"$RABBIT_DIR/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$RABBIT_DIR/server.pid"
  local waited=0
  until rabbit_ready; do
    pid_alive "$RABBIT_DIR/server.pid" || die "RabbitMQ exited during start-up; see $RABBIT_DIR/log/stdout.log and $RABBIT_DIR/log/"
    [ "$waited" -lt "$START_TIMEOUT" ] || die "RabbitMQ did not accept clients on 127.0.0.1:$RABBIT_PORT within ${START_TIMEOUT}s; see $RABBIT_DIR/log/"
    sleep 1; waited=$((waited + 1))
  done
  say "RabbitMQ up on 127.0.0.1:$RABBIT_PORT (node $RABBIT_NODE, pid $(cat "$RABBIT_DIR/server.pid"), ${waited}s)"
}

# ---------------------------------------------------------------- common
stop_pidfile() { # pidfile, name
  local pidfile=$1 name=$2 pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return; }
  pid=$(cat "$pidfile")
  kill -TERM -- "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop in 30s; killing it"
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  say "$name stopped"
}

rabbit_down() {
  [ -d "$RABBIT_DIR" ] || return 0
  rabbit_env
  if pid_alive "$RABBIT_DIR/server.pid"; then
    "$RABBIT_BIN/rabbitmqctl" -q -n "$RABBIT_NODE" stop "$RABBIT_DIR/rabbitmq.pid" >/dev/null 2>&1 || true
  fi
  stop_pidfile "$RABBIT_DIR/server.pid" RabbitMQ
  # epmd is shared by Erlang nodes; stop it only when no node is left registered.
  if command -v epmd >/dev/null && ! epmd -names 2>/dev/null | grep -q '^name '; then epmd -kill >/dev/null 2>&1 || true; fi
}

demo_down() { # the shovel and worker `trovemeter demo` left running (.stack/run/*.pid)
  local pidfile
  for pidfile in "$STACK_DIR"/run/*.pid; do
    [ -f "$pidfile" ] && stop_pidfile "$pidfile" "demo $(basename "$pidfile" .pid)"
  done
  return 0
}

status() {
  local rc=0
  if pid_alive "$KAFKA_DIR/kafka.pid" && port_open "$KAFKA_PORT"; then
    say "Kafka     healthy  127.0.0.1:$KAFKA_PORT  pid $(cat "$KAFKA_DIR/kafka.pid")  log $KAFKA_DIR/logs/server.log"
  else
    say "Kafka     DOWN     127.0.0.1:$KAFKA_PORT"; rc=1
  fi
  if [ -d "$RABBIT_DIR" ]; then rabbit_env; fi
  if pid_alive "$RABBIT_DIR/server.pid" && rabbit_ready; then
    say "RabbitMQ  healthy  127.0.0.1:$RABBIT_PORT  pid $(cat "$RABBIT_DIR/server.pid")  node $RABBIT_NODE  log $RABBIT_DIR/log"
  else
    say "RabbitMQ  DOWN     127.0.0.1:$RABBIT_PORT"; rc=1
  fi
  return $rc
}

logs() {
  local files=()
  for f in "$KAFKA_DIR/logs/server.log" "$KAFKA_DIR/logs/stdout.log" "$RABBIT_DIR"/log/*.log "$STACK_DIR"/run/*.log; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || { say "no logs yet under $STACK_DIR"; return; }
  tail -n "${LINES_PER_LOG:-40}" "${files[@]}"
}

case "${1:-}" in
  fetch) kafka_fetch; rabbit_install ;;
  up) start=$(date +%s); kafka_up; rabbit_up; say "stack ready in $(( $(date +%s) - start ))s" ;;
  down) demo_down; stop_pidfile "$KAFKA_DIR/kafka.pid" Kafka; rabbit_down ;;
  status) status ;;
  logs) logs ;;
  clean) "$0" down; rm -rf "$KAFKA_DIR/data" "$KAFKA_DIR/logs" "$KAFKA_DIR/cluster.id" "$RABBIT_DIR" "$STACK_DIR/run"; say "state removed (Kafka jars kept in $KAFKA_DIR/libs)" ;;
  *) echo "usage: $0 up|down|status|logs|clean|fetch" >&2; exit 2 ;;
esac
