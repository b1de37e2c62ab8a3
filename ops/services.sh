#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) answer, starting
# them when they are installed but stopped, and saying plainly what is missing otherwise.
# Sourced by ops/run and ops/test; run it alone to check a machine.
set -euo pipefail

say() { printf '[services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2 secs=${3:-60}
  for _ in $(seq 1 "$secs"); do
    port_open "$port" && return 0
    sleep 1
  done
  say "$name did not open port $port within ${secs}s"
  return 1
}

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
  if port_open 5432; then return 0; fi
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_port 5432 PostgreSQL
  else
    say "PostgreSQL is not running on 127.0.0.1:5432 and is not installed (apt-get install postgresql)"
    return 1
  fi
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  if command -v rabbitmq-server >/dev/null; then
    say "starting RabbitMQ"
    rabbitmq-server -detached || true
    wait_port 5672 RabbitMQ 120
    rabbitmqctl await_startup >/dev/null 2>&1 || true
  else
    say "RabbitMQ is not running on 127.0.0.1:5672 and is not installed (apt-get install rabbitmq-server)"
    return 1
  fi
}

ensure_services() {
  ensure_postgres
  ensure_rabbitmq
  say "PostgreSQL and RabbitMQ answer"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_services
fi
