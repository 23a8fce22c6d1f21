#!/usr/bin/env python3
"""The measurable effects of 99-uturn.conf's settings on one machine: each setting at the
kernel default and at the recommended value, the same workloads against uturn (io_uring, one
worker), interleaved and repeated; loss, kernel drop counters and relay CPU per run.

    tuning/sysctl_effects.py [--quick] [--repeat 3] [--engine uturn-uring]

Changes sysctls for the duration of the run and restores them at the end (also on Ctrl-C).
Needs root. Results: tuning/results/sysctl-<time>/sysctl.{json,md}.

Measured here: net.core.rmem_default / rmem_max (socket receive buffers: datagrams dropped
when a burst outruns the relay, Udp RcvbufErrors) and net.core.netdev_max_backlog (the per-CPU
backlog loopback traffic passes through: softnet drops). Not measurable on loopback: conntrack
exemption (no stateful firewall here), busy polling, IRQ affinity (no NIC).
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

SETTINGS = {
    "rmem": [
        {"net.core.rmem_default": "212992", "net.core.rmem_max": "212992"},
        {"net.core.rmem_default": "1048576", "net.core.rmem_max": "16777216"},
    ],
    "backlog": [
        {"net.core.netdev_max_backlog": "1000"},
        {"net.core.netdev_max_backlog": "16384"},
    ],
}


def sysctl_path(k):
    return "/proc/sys/" + k.replace(".", "/")


def read_sysctl(k):
    with open(sysctl_path(k)) as f:
        return f.read().strip()


def write_sysctl(k, v):
    with open(sysctl_path(k), "w") as f:
        f.write(v)


def udp_counters():
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    head, vals = lines[0], lines[1]
    return {k: int(v) for k, v in zip(head[1:], vals[1:])}


def softnet_drops():
    total = 0
    with open("/proc/net/softnet_stat") as f:
        for line in f:
            total += int(line.split()[1], 16)
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--engine", default="uturn-uring")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--port", type=int, default=34880)
    args = ap.parse_args()
    args.relay_core = 0
    args.loadgen_core = (os.cpu_count() or 2) - 1
    bins = bench.build(args.no_build)
    started = datetime.datetime.now()
    outdir = os.path.join(bench.TUNING, "results", "sysctl-" + started.strftime("%Y%m%d-%H%M%S"))
    runner = bench.Runner(args, bins, outdir)
    keys = sorted({k for pair in SETTINGS.values() for s in pair for k in s})
    saved = {k: read_sysctl(k) for k in keys}
    rows = []
    try:
        for rep in range(args.repeat):
            for name, pair in SETTINGS.items():
                for which, setting in zip(("default", "recommended"), pair):
                    for k in keys:
                        write_sysctl(k, saved[k])
                    for k, v in setting.items():
                        write_sysctl(k, v)
                    for wl in ("satmax", "audio"):
                        u0, s0 = udp_counters(), softnet_drops()
                        res = runner.workload(wl, args.engine)
                        u1, s1 = udp_counters(), softnet_drops()
                        fig = (res or {}).get("max_rate") if wl == "satmax" else res
                        rows.append({
                            "repeat": rep, "setting": name, "value": which,
                            "sysctls": setting, "workload": wl, "figures": fig,
                            "rcvbuf_errors": u1["RcvbufErrors"] - u0["RcvbufErrors"],
                            "softnet_drops": s1 - s0,
                        })
                        print("%s %s %s: loss %s, rcvbuf errors %d, softnet drops %d" % (
                            name, which, wl, bench.fmt((fig or {}).get("loss"), 4),
                            rows[-1]["rcvbuf_errors"], rows[-1]["softnet_drops"]), flush=True)
    finally:
        for k, v in saved.items():
            write_sysctl(k, v)
    doc = {"started": started.strftime("%Y-%m-%d %H:%M"), "machine": bench.machine(),
           "engine": args.engine, "rows": rows}
    with open(os.path.join(outdir, "sysctl.json"), "w") as f:
        json.dump(doc, f, indent=2)
    md = ["# sysctl effects: %s, %s, %s CPUs (%s)\n" % (
        args.engine, doc["machine"]["cpu_model"], doc["machine"]["cpus"], doc["started"]),
        "Medians over %d interleaved repeats. Rcvbuf errors and softnet drops are machine-wide "
        "counters over each run (other processes included).\n" % args.repeat,
        "| setting | value | workload | loss | rcvbuf errors | softnet drops | "
        "relayed pkts / CPU-s | p99 us |",
        "|---|---|---|---|---|---|---|---|"]
    for name in SETTINGS:
        for which in ("default", "recommended"):
            for wl in ("satmax", "audio"):
                sel = [r for r in rows if r["setting"] == name and r["value"] == which
                       and r["workload"] == wl]
                figs = [r["figures"] or {} for r in sel]

                def med(vals):
                    vals = [v for v in vals if v is not None]
                    return statistics.median(vals) if vals else None

                md.append("| %s | %s (%s) | %s | %s | %s | %s | %s | %s |" % (
                    name, which, ", ".join("%s=%s" % kv for kv in sel[0]["sysctls"].items())
                    if sel else "", wl,
                    bench.fmt(med([f.get("loss") for f in figs]), 4),
                    bench.fmt(med([r["rcvbuf_errors"] for r in sel])),
                    bench.fmt(med([r["softnet_drops"] for r in sel])),
                    bench.fmt(med([f.get("relayed_per_cpu_s") for f in figs])),
                    bench.fmt(med([f.get("p99_us") for f in figs]))))
    text = "\n".join(md) + "\n"
    with open(os.path.join(outdir, "sysctl.md"), "w") as f:
        f.write(text)
    print(text)
    print("written: %s/sysctl.{json,md}" % outdir)


if __name__ == "__main__":
    main()
