#!/usr/bin/env python3
"""Generate the Seqwatch Grafana dashboards (classic JSON model).

    python3 dashboards/grafana/build.py          # rewrite the JSON files
    python3 dashboards/grafana/build.py --check  # fail if they are out of date

The JSON files are what Grafana loads; this script is their source. Edit
here, run it, and commit both. Standard library only.

Query conventions (an end-to-end test runs every `expr` against Prometheus
after replacing the variables, e.g. $instance -> .* and $service -> a value):
  * only the variables $instance and $service appear in expressions, always
    as `instance=~"$instance"` / `service=~"$service"`, and in the overview's
    panels of the other network namespaces $container and $pod, always as
    `container=~"$container", pod=~"$pod"` on seqwatch_netns_info;
  * no Grafana macros ($__rate_interval, $__interval, ...): ranges are fixed;
  * panels read the raw seqwatch_* metrics, not recording rules, so they work
    without the rule file loaded.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

DS = {"type": "prometheus", "uid": "${datasource}"}
INST = 'instance=~"$instance"'
SVC = 'instance=~"$instance", service=~"$service"'
LEGEND_SVC = "{{service}} ({{instance}})"
# The other network namespaces followed (--netns all) of the chosen containers and pods.
NETNS_INFO = ('seqwatch_netns_info{instance=~"$instance", '
              'container=~"$container", pod=~"$pod"}')


# ---------------------------------------------------------------- building blocks

def target(expr, legend="", ref="A", instant=False, table=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant or table:
        t["instant"] = True
        t["range"] = False
    else:
        t["range"] = True
    if table:
        t["format"] = "table"
    return t


def thresholds(*steps):
    """steps: (value, colour) pairs; the first value is ignored (base step)."""
    out = []
    for i, (value, colour) in enumerate(steps):
        out.append({"color": colour, "value": None if i == 0 else value})
    return {"mode": "absolute", "steps": out}


def field_config(unit=None, min_=None, max_=None, steps=None, mappings=None,
                 custom=None, decimals=None):
    defaults = {}
    if unit:
        defaults["unit"] = unit
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if decimals is not None:
        defaults["decimals"] = decimals
    defaults["thresholds"] = steps or thresholds((None, "green"))
    if mappings:
        defaults["mappings"] = mappings
    if custom:
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": []}


WEAK_MAPPINGS = [{
    "type": "value",
    "options": {
        "0": {"index": 0, "text": "ok", "color": "green"},
        "1": {"index": 1, "text": "WEAK", "color": "red"},
    },
}]

ATTACHED_MAPPINGS = [{
    "type": "value",
    "options": {
        "0": {"index": 0, "text": "NOT ATTACHED", "color": "red"},
        "1": {"index": 1, "text": "attached", "color": "green"},
    },
}]

POSTURE_MAPPINGS = [{
    "type": "value",
    "options": {
        "0": {"index": 0, "text": "NOT AS RECOMMENDED", "color": "red"},
        "1": {"index": 1, "text": "ok", "color": "green"},
    },
}]

# Guess bits: < 14 guessable, < 24 suspicious, ~32 unpredictable.
GUESS_BITS_STEPS = thresholds((None, "red"), (14, "orange"), (24, "green"))
# Feasibility: uniform ISNs give ~1.2e-6; the alert fires above 0.1.
FEASIBILITY_STEPS = thresholds((None, "green"), (0.001, "orange"), (0.1, "red"))


def timeseries(title, targets, description, unit=None, min_=None, max_=None,
               steps=None, log=False, bars=False, threshold_lines=False):
    custom = {"drawStyle": "bars" if bars else "line", "lineWidth": 1,
              "fillOpacity": 10, "showPoints": "never", "spanNulls": False}
    if log:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    if threshold_lines:
        custom["thresholdsStyle"] = {"mode": "line+area"}
    return {
        "type": "timeseries", "title": title, "description": description,
        "datasource": DS, "targets": targets,
        "fieldConfig": field_config(unit, min_, max_, steps, custom=custom),
        "options": {"legend": {"displayMode": "list", "placement": "bottom",
                               "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title, targets, description, unit=None, steps=None, mappings=None,
         decimals=None):
    return {
        "type": "stat", "title": title, "description": description,
        "datasource": DS, "targets": targets,
        "fieldConfig": field_config(unit, steps=steps, mappings=mappings,
                                    decimals=decimals),
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                      "values": False},
                    "colorMode": "background", "graphMode": "none",
                    "textMode": "auto", "justifyMode": "auto",
                    "orientation": "auto"},
    }


def table(title, targets, description, rename=None, mappings=None, steps=None,
          unit=None, links=None):
    organize = {"excludeByName": {"Time": True, "__name__": True, "job": True},
                "renameByName": rename or {}}
    fc = field_config(unit, steps=steps, mappings=mappings)
    if links:
        fc["overrides"].append({
            "matcher": {"id": "byName", "options": "service"},
            "properties": [{"id": "links", "value": links}],
        })
    transformations = []
    if len(targets) > 1:
        transformations.append({"id": "merge", "options": {}})
    transformations.append({"id": "organize", "options": organize})
    return {
        "type": "table", "title": title, "description": description,
        "datasource": DS, "targets": targets, "fieldConfig": fc,
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": transformations,
    }


def bargauge(title, targets, description, unit=None, min_=None, max_=None,
             steps=None):
    return {
        "type": "bargauge", "title": title, "description": description,
        "datasource": DS, "targets": targets,
        "fieldConfig": field_config(unit, min_, max_, steps),
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                      "values": False},
                    "orientation": "horizontal", "displayMode": "gradient",
                    "showUnfilled": True},
    }


def state_timeline(title, targets, description, mappings):
    return {
        "type": "state-timeline", "title": title, "description": description,
        "datasource": DS, "targets": targets,
        "fieldConfig": field_config(mappings=mappings,
                                    steps=thresholds((None, "green"), (1, "red"))),
        "options": {"showValue": "auto", "mergeValues": True,
                    "legend": {"displayMode": "list", "placement": "bottom",
                               "showLegend": True}},
    }


def tcpext_rates(*series):
    """Per-instance 5m rates of seqwatch_tcpext_<counter>_total: one target per
    (counter, legend), refIds A, B, ..."""
    return [target(f"sum by (instance) (rate(seqwatch_tcpext_{counter}_total{{{INST}}}[5m]))",
                   "{{instance}} " + legend, ref=chr(ord("A") + i))
            for i, (counter, legend) in enumerate(series)]


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self):
        self.panels = []
        self.x = self.y = self.row_h = 0

    def _next_id(self):
        return len(self.panels) + 1

    def row(self, title):
        if self.x:
            self.y += self.row_h
        self.panels.append({"type": "row", "title": title, "collapsed": False,
                            "id": self._next_id(), "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1
        self.x = self.row_h = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.y += self.row_h
            self.x = self.row_h = 0
        panel["id"] = self._next_id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def spoofing_score_panel():
    return timeseries("Spoofing attempt score (guesses/min)",
                      [target(f"seqwatch_spoofing_attempt_score{{{SVC}}}", LEGEND_SVC)],
                      "Blind sequence-number guesses per minute over the daemon's anomaly "
                      "window: handshake ACKs with a wrong ack and out-of-window handshake "
                      "RSTs. Alert: SeqwatchSpoofingAttempts (>= 1/min for 5m).",
                      min_=0, steps=thresholds((None, "green"), (1, "red")),
                      threshold_lines=True)


# ---------------------------------------------------------------- variables

def variables(service_multi, netns=False):
    def query_var(name, label, query, multi):
        return {
            "name": name, "label": label, "type": "query",
            "datasource": DS, "definition": query,
            "query": {"query": query,
                      "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "sort": 1, "regex": "",
            # includeAll makes Grafana regex-escape the chosen values, which
            # the =~ matchers need ("[2001:db8::1]:443" is a regex otherwise).
            "includeAll": True, "allValue": ".*", "multi": multi,
            "current": {}, "options": [], "hide": 0,
        }

    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "regex": "", "hide": 0, "options": [],
         "refresh": 1, "includeAll": False, "multi": False,
         "current": {"text": "Prometheus", "value": "prometheus"}},
        query_var("instance", "Instance",
                  "label_values(seqwatch_build_info, instance)", True),
        query_var("service", "Service",
                  'label_values(seqwatch_isn_samples{instance=~"$instance"}, service)',
                  service_multi),
    ] + ([
        query_var("container", "Container",
                  'label_values(seqwatch_netns_info{instance=~"$instance"}, container)', True),
        query_var("pod", "Pod",
                  'label_values(seqwatch_netns_info{instance=~"$instance"}, pod)', True),
    ] if netns else [])}


def dashboard(uid, title, description, panels, service_multi, netns=False):
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["seqwatch", "ebpf", "tcp"],
        "editable": True, "graphTooltip": 1, "id": None,
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "time": {"from": "now-6h", "to": "now"}, "timepicker": {},
        "timezone": "browser", "refresh": "30s",
        "schemaVersion": 40, "version": 1,
        "annotations": {"list": [{
            "builtIn": 1, "name": "Annotations & Alerts", "type": "dashboard",
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
        }]},
        "links": [{"title": "Seqwatch", "type": "dashboards", "tags": ["seqwatch"],
                   "asDropdown": False, "includeVars": True, "keepTime": True,
                   "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": variables(service_multi, netns),
        "panels": panels,
    }


# ---------------------------------------------------------------- overview

def overview():
    L = Layout()

    L.row("Health")
    L.add(stat("Instances reporting",
               [target(f"count(seqwatch_build_info{{{INST}}})", instant=True)],
               "Seqwatch daemons exporting seqwatch_build_info."), 4, 4)
    L.add(stat("Programs not attached",
               [target(f"count(seqwatch_program_attached{{{INST}}} == 0) or vector(0)",
                       instant=True)],
               "eBPF programs that failed to attach (seqwatch_program_attached == 0). "
               "Alert: SeqwatchProgramNotAttached.",
               steps=thresholds((None, "green"), (1, "red"))), 4, 4)
    L.add(stat("Tracked services",
               [target(f"sum(seqwatch_services{{{INST}}})", instant=True)],
               "Services (addr:port) the daemons currently score; bounded by a cap."), 4, 4)
    L.add(stat("Weak services",
               [target(f"count(seqwatch_isn_weak{{{SVC}}} == 1) or vector(0)",
                       instant=True)],
               "Services whose ISN generator is scored weak. "
               "Alert: SeqwatchWeakIsnGenerator.",
               steps=thresholds((None, "green"), (1, "red"))), 4, 4)
    L.add(stat("Ring buffer drops (1h)",
               [target(f"sum(increase(seqwatch_ringbuf_dropped_total{{{INST}}}[1h])) or vector(0)",
                       instant=True)],
               "Records dropped in the kernel because the ring buffer was full. "
               "Alert: SeqwatchRingbufDrops.",
               steps=thresholds((None, "green"), (1, "orange")), decimals=0), 4, 4)
    L.add(stat("Parse errors (1h)",
               [target(f"sum(increase(seqwatch_parse_errors_total{{{INST}}}[1h])) or vector(0)",
                       instant=True)],
               "Packets the eBPF parser rejected. Alert: SeqwatchParseErrors.",
               steps=thresholds((None, "green"), (1, "orange")), decimals=0), 4, 4)
    L.add(table("Program attach status",
                [target(f"seqwatch_program_attached{{{INST}}}", table=True)],
                "One row per eBPF program, interface and direction.",
                rename={"Value": "attached"}, mappings=ATTACHED_MAPPINGS,
                steps=thresholds((None, "red"), (1, "green"))), 14, 6)
    L.add(table("Build",
                [target(f"seqwatch_build_info{{{INST}}}", table=True)],
                "Version and revision of each Seqwatch daemon.",
                rename={"Value": "build_info"}), 10, 6)

    L.row("ISN strength")
    L.add(timeseries("ISN guess bits per service",
                     [target(f"seqwatch_isn_guess_space_log2{{{SVC}}}", LEGEND_SVC)],
                     "log2 of the residual spread of each service's ISNs after the best "
                     "model fit: ~32 is unpredictable, below 14 a blind attacker can guess.",
                     min_=0, max_=32, steps=GUESS_BITS_STEPS, threshold_lines=True), 16, 8)
    L.add(bargauge("Weakest services (lowest guess bits)",
                   [target(f"bottomk(10, seqwatch_isn_guess_space_log2{{{SVC}}})",
                           LEGEND_SVC, instant=True)],
                   "The ten services with the most predictable ISNs.",
                   min_=0, max_=32, steps=GUESS_BITS_STEPS), 8, 8)
    L.add(timeseries("Attack feasibility (N = 5000 guesses)",
                     [target(f"seqwatch_isn_attack_feasibility{{{SVC}}}", LEGEND_SVC)],
                     "Probability that a blind attacker hits the next ISN within 5000 "
                     "guesses (uniform ISNs: ~1.2e-6). Alert: SeqwatchIsnGuessable.",
                     unit="percentunit", max_=1, steps=FEASIBILITY_STEPS, log=True,
                     threshold_lines=True), 12, 8)
    weak_link = [{"title": "Open service drill-down", "targetBlank": False,
                  "url": "/d/seqwatch-service/seqwatch-service?${datasource:queryparam}"
                         "&var-instance=${__data.fields.instance}"
                         "&var-service=${__data.fields.service}&${__url_time_range}"}]
    weak_only = f"(seqwatch_isn_weak{{{SVC}}} == 1)"
    L.add(table("Weak services",
                [target(weak_only, ref="A", table=True),
                 target(f"seqwatch_isn_guess_space_log2{{{SVC}}} "
                        f"and on (job, instance, service) {weak_only}",
                        ref="B", table=True),
                 target(f"seqwatch_isn_attack_feasibility{{{SVC}}} "
                        f"and on (job, instance, service) {weak_only}",
                        ref="C", table=True)],
                "Services scored weak, with their guess bits and attack feasibility. "
                "Click a service to open its drill-down.",
                rename={"Value #A": "weak", "Value #B": "guess bits",
                        "Value #C": "feasibility"},
                links=weak_link), 12, 8)

    L.row("Pipeline")
    L.add(timeseries("SYN-ACK samples/s",
                     [target(f"sum by (instance, interface, direction) "
                             f"(rate(seqwatch_synack_samples_total{{{INST}}}[5m]))",
                             "{{instance}} {{interface}} {{direction}}")],
                     "SYN-ACKs sampled by the eBPF programs.", unit="ops"), 8, 7)
    L.add(timeseries("Packets seen/s",
                     [target(f"sum by (instance) (rate(seqwatch_packets_seen_total{{{INST}}}[5m]))",
                             "{{instance}}")],
                     "Packets the eBPF programs inspected.", unit="pps"), 8, 7)
    L.add(timeseries("Drops and parse errors/s",
                     [target(f"sum by (instance) (rate(seqwatch_ringbuf_dropped_total{{{INST}}}[5m]))",
                             "{{instance}} ring buffer drops", ref="A"),
                      target(f"sum by (instance, reason) (rate(seqwatch_parse_errors_total{{{INST}}}[5m]))",
                             "{{instance}} parse error: {{reason}}", ref="B")],
                     "Records lost in the kernel and packets rejected by the parser.",
                     unit="ops"), 8, 7)
    L.add(timeseries("Tracked services",
                     [target(f"seqwatch_services{{{INST}}}", "{{instance}}")],
                     "Services currently tracked (capped in the daemon).", min_=0), 12, 7)
    L.add(timeseries("Service evictions/s",
                     [target(f"sum by (instance) (rate(seqwatch_service_evictions_total{{{INST}}}[5m]))",
                             "{{instance}}")],
                     "Services evicted because the cap was reached: sustained evictions "
                     "mean scores are reset before they mature.", unit="ops"), 12, 7)

    L.row("Handshake anomalies and spoofing")
    L.add(timeseries("Handshake anomalies/s by kind",
                     [target(f"sum by (kind) (rate(seqwatch_handshake_anomalies_total{{{SVC}}}[5m]))",
                             "{{kind}}")],
                     "Alert: SeqwatchHandshakeAnomalySurge (per service and kind).",
                     unit="ops"), 12, 8)
    L.add(timeseries("Handshake anomalies/s, top 10 services",
                     [target(f"topk(10, sum by (instance, service) "
                             f"(rate(seqwatch_handshake_anomalies_total{{{SVC}}}[5m])))",
                             LEGEND_SVC)],
                     "Services with the most handshake anomalies.", unit="ops"), 12, 8)
    L.add(spoofing_score_panel(), 6, 8)
    L.add(timeseries("Challenge ACKs per minute",
                     [target(f"seqwatch_spoofing_challenge_ack_score{{{INST}}}", "{{instance}}")],
                     "RFC 5961 challenge ACKs (sent or rate-limited) per minute over the "
                     "daemon's anomaly window, for its whole network namespace: blind RST, "
                     "SYN and ACK guesses against established connections. "
                     "Alert: SeqwatchChallengeAckSurge (>= 60/min for 10m).",
                     min_=0, steps=thresholds((None, "green"), (60, "red")),
                     threshold_lines=True), 6, 8)
    L.add(table("Top anomaly sources",
                [target(f"seqwatch_anomaly_top_source_events{{{INST}}}", table=True)],
                "Events over the anomaly window from the top sources of each anomaly "
                "kind, by rank (1 = most). The addresses are not labels: "
                "GET /api/v1/anomalies/top-sources on the daemon lists them.",
                rename={"Value": "events"}), 6, 8)
    L.add(timeseries("Listeners lost after an anomaly",
                     [target(f"sum by (instance, service) "
                             f"(increase(seqwatch_listener_lost_after_anomaly_total{{{SVC}}}[1h]))",
                             LEGEND_SVC)],
                     "Listeners that stopped answering right after a handshake anomaly, "
                     "per hour. Alert: SeqwatchListenerLostAfterAnomaly.",
                     min_=0, bars=True), 6, 8)

    L.row("TLS record framing")
    L.add(stat("Plaintext on TLS sessions (24h)",
               [target(f"sum(increase(seqwatch_tls_plaintext_suspected_total{{{INST}}}[24h])) "
                       f"or vector(0)", instant=True)],
               "Bytes that are not a TLS record header where one had to start, sent by "
               "this host on a TLS session. Flows and offsets: the event log "
               "(tls_plaintext_suspected). Alert: SeqwatchTlsPlaintextSuspected.",
               steps=thresholds((None, "green"), (1, "red"))), 4, 8)
    L.add(timeseries("TLS sessions collapsing, by service",
                     [target(f"sum by (instance, service) (rate(seqwatch_tls_sessions_total"
                             f"{{{INST}, end=~\"alert|reset_after_data|plaintext_then_collapse\"}}[15m])) "
                             f"/ sum by (instance, service) "
                             f"(rate(seqwatch_tls_sessions_total{{{INST}}}[15m]))",
                             LEGEND_SVC)],
                     "Share of each service's TLS sessions that ended in an alert record, a "
                     "reset right after application data, or a collapse after plaintext. "
                     "Alert: SeqwatchTlsSessionCollapse (over 20% for 15m).",
                     unit="percentunit", min_=0, max_=1,
                     steps=thresholds((None, "green"), (0.2, "red")),
                     threshold_lines=True), 8, 8)
    L.add(timeseries("TLS sessions ended/s, by how",
                     [target(f"sum by (end) (rate(seqwatch_tls_sessions_total{{{INST}}}[5m]))",
                             "{{end}}")],
                     "fin: a clean close; alert: an unencrypted alert record last; reset, "
                     "reset_after_data: a reset (within 1 s of application data); "
                     "plaintext_then_collapse: ended within 10 s of plaintext.",
                     unit="ops"), 6, 8)
    L.add(timeseries("TLS check: records checked, tracking lost/s",
                     [target(f"sum by (instance) (rate(seqwatch_tls_records_checked_total{{{INST}}}[5m]))",
                             "records checked {{instance}}"),
                      target(f"sum by (instance) (rate(seqwatch_tls_tracking_lost_total{{{INST}}}[5m]))",
                             "tracking lost {{instance}}", ref="B"),
                      target(f"sum by (instance) (rate(seqwatch_tls_resyncs_total{{{INST}}}[5m]))",
                             "resyncs {{instance}}", ref="C"),
                      target(f"sum by (instance) (rate(seqwatch_tls_events_dropped_total{{{INST}}}[5m]))",
                             "events dropped {{instance}}", ref="D")],
                     "The kernel check's own health: record headers checked; flows whose "
                     "boundaries became unknown (a gap, a violation, a flow first seen "
                     "mid-stream) and flows resynchronised; events lost on a full ring buffer.",
                     unit="ops"), 6, 8)

    L.row("Hardening posture and TCP stack")
    L.add(stat("Posture checks not as recommended",
               [target(f"count(seqwatch_posture_check{{{INST}}} == 0) or vector(0)",
                       instant=True)],
               "Hardening sysctls set against their recommendation (seqwatch posture). "
               "Alert: SeqwatchPostureCheckFailed.",
               steps=thresholds((None, "green"), (1, "red"))), 4, 8)
    L.add(table("Posture checks",
                [target(f"seqwatch_posture_check{{{INST}}}", table=True)],
                "One row per hardening check and instance; scope netns is the daemon's "
                "network namespace, host the whole machine. Values, recommendations and "
                "reasons: seqwatch posture on the host. Unreadable checks have no row.",
                rename={"Value": "as recommended"}, mappings=POSTURE_MAPPINGS,
                steps=thresholds((None, "red"), (1, "green"))), 20, 8)
    L.add(timeseries("Listen queue overflows and drops/s",
                     tcpext_rates(("listen_overflows", "ListenOverflows"),
                                  ("listen_drops", "ListenDrops")),
                     "Handshakes dropped because an accept queue was full (overflows), and "
                     "every drop at a listener (drops). Alert: SeqwatchListenQueueOverflow.",
                     unit="ops"), 6, 8)
    L.add(timeseries("SYN cookies/s",
                     tcpext_rates(("syncookies_sent", "sent"),
                                  ("syncookies_recv", "valid"),
                                  ("syncookies_failed", "failed")),
                     "Cookies are sent when a SYN queue overflows (tcp_syncookies = 1): a SYN "
                     "flood or an undersized backlog. Alert: SeqwatchSynFlood.",
                     unit="ops"), 6, 8)
    L.add(timeseries("Challenge ACKs/s (RFC 5961)",
                     tcpext_rates(("tcp_challenge_ack", "challenge ACKs"),
                                  ("tcp_syn_challenge", "for SYNs")),
                     "Challenge ACKs answer in-window RSTs and SYNs on established "
                     "connections: blind reset or injection attempts raise them.",
                     unit="ops"), 6, 8)
    L.add(timeseries("SYN queue full, embryonic RSTs, backlog drops/s",
                     tcpext_rates(("tcp_req_q_full_drop", "SYN queue full: dropped"),
                                  ("tcp_req_q_full_do_cookies", "SYN queue full: cookies"),
                                  ("embryonic_rsts", "embryonic RSTs"),
                                  ("tcp_backlog_drop", "backlog drops"),
                                  ("tcp_abort_on_data", "aborts on data")),
                     "The other TcpExt counters Seqwatch re-exports (node_exporter leaves them "
                     "out by default).", unit="ops"), 6, 8)

    L.row("Listeners and shared resources")
    legend_port = "{{port}} ({{instance}})"
    L.add(stat("Unresponsive listening ports",
               [target(f"sum(seqwatch_listener_unresponsive{{{INST}}}) or vector(0)",
                       instant=True)],
               "Ports where a connection has waited longer than --unresponsive-after "
               "in the accept queue. Alert: SeqwatchListenerUnresponsive.",
               steps=thresholds((None, "green"), (1, "red"))), 4, 8)
    L.add(stat("Silent episodes (24h)",
               [target(f"sum(increase(seqwatch_host_silent_total{{{INST}}}[24h])) or vector(0)",
                       instant=True)],
               "Times a host received TCP segments and sent none for longer than "
               "--unresponsive-after. Alert: SeqwatchHostWasSilent; when: the event log.",
               steps=thresholds((None, "green"), (1, "red"))), 4, 8)
    L.add(timeseries("Oldest accept-queue wait by port",
                     [target(f"seqwatch_listener_oldest_wait_seconds{{{INST}}}", legend_port)],
                     "How long the oldest connection in each port's accept queue has "
                     "waited for accept(2): a growing line is a server that stopped "
                     "accepting.", unit="s", min_=0), 8, 8)
    L.add(timeseries("Accept queue by port (dashed: backlog)",
                     [target(f"seqwatch_listener_accept_queue{{{INST}}}", legend_port),
                      target(f"seqwatch_listener_accept_queue_max{{{INST}}}",
                             "backlog " + legend_port, ref="B")],
                     "Connections waiting for accept(2), against the listener's backlog; "
                     "above it the queue overflows.", min_=0), 8, 8)
    L.add(timeseries("Listener drops/s and SYN queue by port",
                     [target(f"rate(seqwatch_listener_drops_total{{{INST}}}[5m])",
                             "drops/s " + legend_port),
                      target(f"seqwatch_listener_syn_queue{{{INST}}}",
                             "SYN queue " + legend_port, ref="B")],
                     "SYNs and handshakes each port's listeners dropped (SYN or accept "
                     "queue full), and half-open handshakes waiting for their ACK.",
                     min_=0), 8, 8)
    L.add(table("Top owners of TCP sockets",
                [target(f"seqwatch_owner_sockets{{{INST}}}", table=True),
                 target(f"seqwatch_owner_listen_backlog{{{INST}}}", ref="B", table=True),
                 target(f"seqwatch_owner_ephemeral_ports{{{INST}}}", ref="C", table=True)],
                "Sockets, connections waiting in their listeners' accept queues and "
                "ephemeral ports per uid and cgroup (top 10; the rest under other). "
                "Details, processes: GET /api/v1/owners.",
                rename={"Value #A": "sockets", "Value #B": "waiting to be accepted",
                        "Value #C": "ephemeral ports"}), 8, 8)
    L.add(timeseries("Ephemeral ports and conntrack table in use",
                     [target(f"seqwatch_ephemeral_ports_in_use{{{INST}}} / "
                             f"(seqwatch_ephemeral_ports_in_use{{{INST}}} + "
                             f"seqwatch_ephemeral_ports_available{{{INST}}})",
                             "ephemeral ports {{instance}}"),
                      target(f"seqwatch_conntrack_entries{{{INST}}} / "
                             f"seqwatch_conntrack_entries_max{{{INST}}}",
                             "conntrack {{instance}}", ref="B")],
                     "Share of net.ipv4.ip_local_port_range held by TCP sockets, and of "
                     "the conntrack table (absent without conntrack). Alerts: "
                     "SeqwatchEphemeralPortsExhausted, SeqwatchConntrackTableFull.",
                     unit="percentunit", min_=0, max_=1), 8, 8)
    L.add(timeseries("Handshakes by port/s: SYNs in, SYN-ACKs out, completed",
                     [target(f"rate(seqwatch_listener_syns_received_total{{{INST}}}[5m])",
                             "SYNs " + legend_port),
                      target(f"rate(seqwatch_listener_synacks_sent_total{{{INST}}}[5m])",
                             "SYN-ACKs " + legend_port, ref="B"),
                      target(f"rate(seqwatch_listener_handshakes_completed_total{{{INST}}}[5m])",
                             "completed " + legend_port, ref="C")],
                     "Per listening port: SYNs arriving (needs --direction ingress or both), "
                     "SYN-ACKs sent, handshakes completed (retransmissions count as SYNs and "
                     "SYN-ACKs). SYNs without SYN-ACKs were dropped unanswered; SYN-ACKs "
                     "without completions got no valid ACK (a flood, a scan, a lost route "
                     "back). Alert: SeqwatchListenerHandshakesNotCompleting.",
                     unit="ops", min_=0), 12, 8)
    L.add(timeseries("Handshakes completed per SYN by port",
                     [target(f"rate(seqwatch_listener_handshakes_completed_total{{{INST}}}[5m]) / "
                             f"rate(seqwatch_listener_syns_received_total{{{INST}}}[5m])",
                             legend_port)],
                     "1 when every SYN becomes a connection; lower when SYNs are retransmitted, "
                     "dropped or never completed. Local (loopback) connections complete "
                     "without a SYN on the monitored interfaces and can lift it above 1.",
                     unit="percentunit", min_=0), 12, 8)

    L.row("Listeners in other network namespaces (--netns all)")
    legend_netns = "{{container}}{{pod}} {{netns}}:{{port}} ({{instance}})"

    def joined(metric):
        """A listener metric of the other namespaces, with the container and pod of its
        namespace (seqwatch_netns_info), of the chosen containers and pods only."""
        return (f"{metric}{{{INST}}} * on(instance, netns) group_left(container, pod) "
                f"{NETNS_INFO}")

    L.add(stat("Namespaces followed",
               [target(f"sum(seqwatch_netns_followed{{{INST}}})", instant=True)],
               "Other network namespaces whose listeners are read; those beyond the "
               "bound (256): seqwatch_netns_unfollowed."), 4, 8)
    L.add(timeseries("Oldest accept-queue wait by container and port",
                     [target(joined("seqwatch_netns_listener_oldest_wait_seconds"),
                             legend_netns)],
                     "As above, for the listeners of the other network namespaces, named by "
                     "the container or pod their namespace belongs to (empty for neither).",
                     unit="s", min_=0), 10, 8)
    L.add(timeseries("Accept and SYN queue by container and port (dashed: backlog)",
                     [target(joined("seqwatch_netns_listener_accept_queue"), legend_netns),
                      target(joined("seqwatch_netns_listener_accept_queue_max"),
                             "backlog " + legend_netns, ref="B"),
                      target(joined("seqwatch_netns_listener_syn_queue"),
                             "SYN queue " + legend_netns, ref="C")],
                     "Connections waiting for accept(2) against the backlog, and half-open "
                     "handshakes (read at most every 10 s in an idle namespace), in the other "
                     "network namespaces.", min_=0), 10, 8)

    return dashboard("seqwatch-overview", "Seqwatch / Overview",
                     "TCP ISN predictability of every service, and the health of the "
                     "Seqwatch eBPF pipeline.", L.panels, service_multi=True, netns=True)


# ---------------------------------------------------------------- per service

def service():
    L = Layout()

    L.row("Verdict")
    L.add(stat("Weak ISN generator",
               [target(f"seqwatch_isn_weak{{{SVC}}}", LEGEND_SVC, instant=True)],
               "The scorer's verdict. Alert: SeqwatchWeakIsnGenerator.",
               mappings=WEAK_MAPPINGS,
               steps=thresholds((None, "green"), (1, "red"))), 6, 5)
    L.add(stat("Guess bits",
               [target(f"seqwatch_isn_guess_space_log2{{{SVC}}}", LEGEND_SVC, instant=True)],
               "~32 unpredictable, below 14 guessable.", steps=GUESS_BITS_STEPS,
               decimals=1), 6, 5)
    L.add(stat("Attack feasibility (N = 5000)",
               [target(f"seqwatch_isn_attack_feasibility{{{SVC}}}", LEGEND_SVC,
                       instant=True)],
               "Probability that 5000 blind guesses hit the next ISN. "
               "Alert: SeqwatchIsnGuessable.",
               unit="percentunit", steps=FEASIBILITY_STEPS), 6, 5)
    L.add(stat("Samples",
               [target(f"seqwatch_isn_samples{{{SVC}}}", LEGEND_SVC, instant=True)],
               "SYN-ACKs the score is based on.", decimals=0), 6, 5)

    L.row("ISN strength over time")
    L.add(timeseries("Guess bits",
                     [target(f"seqwatch_isn_guess_space_log2{{{SVC}}}", LEGEND_SVC)],
                     "log2 of the residual spread after the best model fit.",
                     min_=0, max_=32, steps=GUESS_BITS_STEPS, threshold_lines=True), 12, 8)
    L.add(timeseries("Attack feasibility (N = 5000)",
                     [target(f"seqwatch_isn_attack_feasibility{{{SVC}}}", LEGEND_SVC)],
                     "Uniform ISNs give ~1.2e-6; the alert fires above 10%.",
                     unit="percentunit", max_=1, steps=FEASIBILITY_STEPS, log=True,
                     threshold_lines=True), 12, 8)
    L.add(state_timeline("Weak flag",
                         [target(f"seqwatch_isn_weak{{{SVC}}}", LEGEND_SVC)],
                         "When the scorer judged the generator weak.", WEAK_MAPPINGS), 12, 6)
    L.add(timeseries("Samples",
                     [target(f"seqwatch_isn_samples{{{SVC}}}", LEGEND_SVC)],
                     "SYN-ACKs behind the score: small counts give noisy scores.",
                     min_=0), 12, 6)

    L.row("Nmap-compatible SEQ metrics (last 6 samples)")
    L.add(timeseries("Nmap SP (sequence predictability)",
                     [target(f"seqwatch_isn_nmap_sp{{{SVC}}}", LEGEND_SVC)],
                     "For comparison with nmap -O. Passive SP overestimates strength "
                     "when connection gaps are irregular; trust guess bits first.",
                     min_=0), 8, 7)
    L.add(timeseries("Nmap GCD",
                     [target(f"seqwatch_isn_nmap_gcd{{{SVC}}}", LEGEND_SVC)],
                     "GCD of ISN differences: a large GCD (e.g. 64000) means fixed steps.",
                     min_=0), 8, 7)
    L.add(timeseries("Nmap ISR (ISN counter rate)",
                     [target(f"seqwatch_isn_nmap_isr{{{SVC}}}", LEGEND_SVC)],
                     "nmap's ISR: 8 x log2 of the average ISN increment rate per second.",
                     min_=0), 8, 7)

    L.row("Handshake anomalies and spoofing")
    L.add(timeseries("Handshake anomalies/s by kind",
                     [target(f"sum by (instance, service, kind) "
                             f"(rate(seqwatch_handshake_anomalies_total{{{SVC}}}[5m]))",
                             "{{kind}} " + LEGEND_SVC)],
                     "Alert: SeqwatchHandshakeAnomalySurge.", unit="ops"), 8, 8)
    L.add(spoofing_score_panel(), 8, 8)
    L.add(timeseries("Listeners lost after an anomaly",
                     [target(f"sum by (instance, service) "
                             f"(increase(seqwatch_listener_lost_after_anomaly_total{{{SVC}}}[1h]))",
                             LEGEND_SVC)],
                     "Alert: SeqwatchListenerLostAfterAnomaly.", min_=0, bars=True), 8, 8)

    return dashboard("seqwatch-service", "Seqwatch / Service",
                     "ISN predictability of one service, with nmap-compatible metrics "
                     "for comparison.", L.panels, service_multi=False)


DASHBOARDS = {
    "seqwatch-overview.json": overview,
    "seqwatch-service.json": service,
}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv):
    check = argv[1:] == ["--check"]
    if argv[1:] not in ([], ["--check"]):
        sys.exit(f"usage: {argv[0]} [--check]")
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        sys.exit(f"out of date (run {argv[0]}): {', '.join(stale)}")
    if check:
        print(f"up to date: {', '.join(DASHBOARDS)}")


if __name__ == "__main__":
    main(sys.argv)
