#!/usr/bin/env bash
# Debian's Prometheus server + promtool and Alertmanager + amtool: the real engines the alert-rule tests
# (tests/helm/test_alerts.py, tests/e2e/test_prometheus_alerts.py) run. Idempotent; needs root (or sudo).
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends prometheus prometheus-alertmanager >/dev/null ||
  { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends prometheus prometheus-alertmanager >/dev/null; }
command -v promtool >/dev/null && command -v amtool >/dev/null
