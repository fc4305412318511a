#!/usr/bin/env bash
# Checks the Seqwatch Prometheus config, rules, rule unit tests and Grafana
# dashboards. Needs promtool (Debian: apt-get install prometheus) and python3.
# Runs from any directory; exits non-zero on the first failing step.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

command -v promtool >/dev/null || { echo "check.sh: promtool not found (apt-get install prometheus)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "check.sh: python3 not found" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { printf '\n==> %s\n' "$*"; }

step "promtool check config prometheus/prometheus.yml"
promtool check config prometheus/prometheus.yml

step "promtool check config prometheus/federation.yml (the README's fleet example)"
promtool check config prometheus/federation.yml

step "promtool check rules --lint=all --lint-fatal prometheus/seqwatch-rules.yml"
promtool check rules --lint=all --lint-fatal prometheus/seqwatch-rules.yml

step "promtool test rules prometheus/seqwatch-rules.test.yml"
promtool test rules prometheus/seqwatch-rules.test.yml

step "alerts: names, labels, annotations, runbooks (docs/alerts.md), tests"
python3 check.py alerts

step "grafana: JSON syntax"
for f in grafana/*.json; do
  python3 -m json.tool "$f" >/dev/null
  echo "  $f: valid JSON"
done

step "grafana: uids, panel ids, targets; PromQL of every query"
python3 check.py dashboards "$tmp/grafana-queries.yml"
promtool check rules --lint=none "$tmp/grafana-queries.yml"

step "grafana: JSON is what grafana/build.py generates"
python3 grafana/build.py --check

echo
echo "check.sh: all checks passed"
