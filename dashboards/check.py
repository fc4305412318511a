#!/usr/bin/env python3
"""Static checks on the Seqwatch dashboards and alerts (standard library only).

Called by check.sh; exits non-zero with one line per problem.

    check.py dashboards OUT.yml   check the Grafana JSON; write every panel and
                                  variable query, with the variables substituted,
                                  as recording rules into OUT.yml so that
                                  `promtool check rules` parses the PromQL
    check.py alerts               cross-check the alert rules, their unit tests
                                  and docs/alerts.md

There is no YAML parser in the standard library, so the alert checks read the
YAML files with regular expressions and rely on their layout: one `- alert:` or
`- record:` per rule, and in the tests `- alertname:` / `eval_time:` /
`exp_alerts:` in that order, quiet cases written `exp_alerts: []`.
"""

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRAFANA = HERE / "grafana"
RULES = HERE / "prometheus" / "seqwatch-rules.yml"
TESTS = HERE / "prometheus" / "seqwatch-rules.test.yml"
RUNBOOKS = HERE.parent / "docs" / "alerts.md"

# What an end-to-end test substitutes; "[...]" checks that IPv6 services,
# regex-escaped by Grafana, still parse.
SUBSTITUTIONS = [
    {"instance": ".*", "service": ".*", "container": ".*", "pod": ".*"},
    {"instance": "127.0.0.1:10045", "service": "10.0.0.1:22",
     "container": "0123456789ab", "pod": ""},
    {"instance": "127.0.0.1:10045", "service": r"\\[2001:db8::1\\]:443",
     "container": "", "pod": "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718"},
]
VARIABLES = {"datasource", "instance", "service"}
# In the dashboards with panels of the other network namespaces only.
NETNS_VARIABLES = ("container", "pod")
EXPR_VARIABLES = {"instance", "service", *NETNS_VARIABLES}

problems = []


def problem(msg):
    problems.append(msg)


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def substitute(expr, values):
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)


def check_dashboards(out_path):
    files = sorted(GRAFANA.glob("*.json"))
    if not files:
        problem(f"no dashboards in {GRAFANA}")
    uids, titles, queries = {}, {}, []
    for path in files:
        name = path.name
        d = json.loads(path.read_text())
        uid, title = d.get("uid"), d.get("title")
        if not uid:
            problem(f"{name}: no uid")
        elif uid in uids:
            problem(f"{name}: uid {uid!r} also used by {uids[uid]}")
        uids[uid] = name
        if title in titles:
            problem(f"{name}: title {title!r} also used by {titles[title]}")
        titles[title] = name

        variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
        for missing in sorted(VARIABLES - variables.keys()):
            problem(f"{name}: no variable {missing!r}")
        present = [var for var in NETNS_VARIABLES if var in variables]
        if present and len(present) != len(NETNS_VARIABLES):
            problem(f"{name}: variables {present} without the others of {NETNS_VARIABLES}")
        for var in ("instance", "service", *present):
            v = variables.get(var, {})
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
            if not m or m.group(2) != var:
                problem(f"{name}: variable {var}: query {q!r} is not label_values(..., {var})")
            else:
                queries.append((f"{name} variable {var}", m.group(1)))

        ids = set()
        n_targets = 0
        for p in walk_panels(d.get("panels", [])):
            where = f"{name} panel {p.get('id')} {p.get('title')!r}"
            pid = p.get("id")
            if not isinstance(pid, int):
                problem(f"{where}: id is not an integer")
            elif pid in ids:
                problem(f"{where}: duplicate panel id {pid}")
            ids.add(pid)
            if p.get("type") == "row":
                continue
            targets = p.get("targets") or []
            if not targets:
                problem(f"{where}: no targets")
            refs = set()
            for t in targets:
                n_targets += 1
                expr = t.get("expr")
                if not isinstance(expr, str) or not expr.strip():
                    problem(f"{where} target {t.get('refId')}: empty expr")
                    continue
                if t.get("refId") in refs:
                    problem(f"{where}: duplicate refId {t.get('refId')}")
                refs.add(t.get("refId"))
                used = set(re.findall(r"\$\{?(\w+)", expr))
                if used & set(NETNS_VARIABLES) and not present:
                    problem(f"{where}: expr uses {sorted(used & set(NETNS_VARIABLES))}, "
                            "which this dashboard does not define")
                    continue
                if used - EXPR_VARIABLES:
                    problem(f"{where}: expr uses {sorted(used - EXPR_VARIABLES)}; "
                            f"only ${', $'.join(sorted(EXPR_VARIABLES))} are substituted")
                    continue
                if re.search(r"\$\{", expr):
                    problem(f"{where}: write $var, not ${{var}}")
                    continue
                queries.append((where + f" target {t.get('refId')}", expr))
        print(f"  {name}: uid {uid}, {len(ids)} panels with unique ids, "
              f"{n_targets} targets with an expr")

    # Every query, with each substitution, as a recording rule for promtool.
    lines = ["# Generated by dashboards/check.py: Grafana queries, variables substituted.",
             "groups:", "  - name: grafana-queries", "    rules:"]
    n = 0
    for where, expr in queries:
        for values in SUBSTITUTIONS:
            n += 1
            lines.append(f"      # {where}")
            lines.append(f"      - record: grafana:query_{n}")
            lines.append(f"        expr: {json.dumps(substitute(expr, values))}")
    Path(out_path).write_text("\n".join(lines) + "\n")
    print(f"  {len(queries)} queries x {len(SUBSTITUTIONS)} substitutions written to {out_path}")


def slug(heading):
    """GitHub's anchor for a Markdown heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def check_alerts():
    rules = RULES.read_text()
    blocks = re.split(r"(?m)^\s*- (?=alert:|record:)", rules)[1:]
    alerts, records = {}, []
    for b in blocks:
        kind, name = re.match(r"(alert|record):\s*(\S+)", b).groups()
        if kind == "record":
            records.append(name)
            continue
        alerts[name] = b
        if not re.fullmatch(r"Seqwatch[A-Z][A-Za-z0-9]*", name):
            problem(f"alert {name}: not CamelCase with the Seqwatch prefix")
        if not re.search(r"(?m)^\s+severity:\s*(critical|warning|info)\s*$", b):
            problem(f"alert {name}: no severity critical|warning|info")
        for ann in ("summary", "description"):
            if not re.search(rf"(?m)^\s+{ann}:", b):
                problem(f"alert {name}: no {ann} annotation")
        m = re.search(r"(?m)^\s+runbook_url:\s*(\S+)\s*$", b)
        if not m or m.group(1) != f"docs/alerts.md#{name.lower()}":
            problem(f"alert {name}: runbook_url is not docs/alerts.md#{name.lower()}")
        expr = re.search(r"(?s)expr:(.*?)\n\s+(?:for|labels):", b).group(1)
        if 'job="seqwatch"' not in expr and not re.search(r"\bseqwatch:\w+:\w+", expr):
            problem(f"alert {name}: expr selects neither job=\"seqwatch\" nor a recording rule")

    anchors = {slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", RUNBOOKS.read_text())}
    sections = set(re.findall(r"(?m)^## (Seqwatch\w+)\s*$", RUNBOOKS.read_text()))
    for name in alerts:
        if name.lower() not in anchors:
            problem(f"alert {name}: no section '## {name}' in {RUNBOOKS.name}")
    for name in sorted(sections - alerts.keys()):
        problem(f"{RUNBOOKS.name}: section {name} has no alert")

    tests = TESTS.read_text()
    cases = re.findall(
        r"(?m)^\s+- alertname:\s*(\S+)\s*\n\s+eval_time:\s*\S+\s*\n\s+exp_alerts:(.*)\n(\s+- exp_labels:)?",
        tests)
    firing = {name for name, rest, labels in cases if rest.strip() == "" and labels}
    quiet = {name for name, rest, labels in cases if rest.strip() == "[]"}
    for name in alerts:
        if name not in firing:
            problem(f"alert {name}: no test case where it fires")
        if name not in quiet:
            problem(f"alert {name}: no test case where it stays quiet (exp_alerts: [])")
    for name in sorted({c[0] for c in cases} - alerts.keys()):
        problem(f"test cases for unknown alert {name}")
    tested = set(re.findall(r"(?m)^\s+- expr:\s*(\S+)\s*$", tests))
    for name in records:
        if name not in tested:
            problem(f"recording rule {name}: no promql_expr_test")
    print(f"  {len(alerts)} alerts: each has severity, summary, description, runbook_url, "
          f"a runbook section, a firing and a quiet test")
    print(f"  {len(records)} recording rules: each has a promql_expr_test")


def main(argv):
    if argv[1:2] == ["dashboards"] and len(argv) == 3:
        check_dashboards(argv[2])
    elif argv[1:] == ["alerts"]:
        check_alerts()
    else:
        sys.exit(f"usage: {argv[0]} dashboards OUT.yml | alerts")
    if problems:
        for p in problems:
            print(f"FAIL: {p}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv)
