#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) from Maven Central jars, no Docker needed.
#
#   scripts/kafka.sh fetch                 # download the jars once (needs mvn)
#   scripts/kafka.sh start [--port 9092 --controller-port 9093 --data-dir var/kafka]
#   scripts/kafka.sh status                # exit 0 if running, 3 if not
#   scripts/kafka.sh stop | kill           # SIGTERM (then SIGKILL) | SIGKILL
#
# Thin wrapper over `python -m dev.kafka`; run from the repo root, or set PYTHON.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif [[ -x "$repo_root/.venv/bin/python" ]]; then
  python="$repo_root/.venv/bin/python"
else
  python="python3"
fi

if [[ $# -eq 0 ]]; then
  set -- --help
fi
exec "$python" -m dev.kafka "$@"
