#!/usr/bin/env python3
"""Multi-core scaling of the relay: relayed packets per second and per CPU-second with 1, 2, 4,
8, 16 workers, on one machine, loadgen on the other cores.

    tuning/scaling.sh [--workers 1,2,4,8,16] [--engines uturn-uring,coturn] [--quick]

Worker counts the machine cannot hold next to loadgen (at least as many loadgen threads as
relay workers, each on a CPU of its own) are skipped with a note; on a 2-core machine only
"1 worker" runs cleanly, and "2 workers" shares both CPUs with loadgen (reported as such). The
saturating workload scales its agents with the workers (20 per worker, --max-rate), so that each
worker sees a few heavy flows whatever the count (SO_REUSEPORT spreads clients by 5-tuple hash,
so a handful of flows would leave workers idle); the audio workload runs 1,000 agents per worker
at 50 packets/s.

Output: tuning/results/scaling-<time>/scaling.{json,md}.
"""

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the harness: engines, loadgen runs, machine description)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4,8,16")
    ap.add_argument("--engines", default="uturn-uring,coturn")
    ap.add_argument("--workloads", default="sat,audio")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--allow-shared", action="store_true",
                    help="run worker counts that leave loadgen fewer CPUs than the relay "
                         "(numbers then include the two competing for CPUs)")
    ap.add_argument("--port", type=int, default=34980)
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    workers = [int(w) for w in args.workers.split(",") if w]
    engines = [e for e in args.engines.split(",") if e]
    workloads = [w for w in args.workloads.split(",") if w]
    if "coturn" in engines:
        bench.ensure_coturn()
    bins = bench.build(args.no_build)
    started = datetime.datetime.now()
    outdir = os.path.join(bench.TUNING, "results",
                          "scaling-" + started.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(os.path.join(outdir, "raw"), exist_ok=True)
    plan = bench.Plan(args.quick)
    rows = []
    for w in workers:
        lg_threads = max(1, min(w, cpus - w))
        shared = w + lg_threads > cpus
        if shared and not args.allow_shared and w > 1:
            note = "skipped: %d workers + %d loadgen threads > %d CPUs" % (w, lg_threads, cpus)
            print(note, flush=True)
            rows.append({"workers": w, "skipped": note})
            continue
        if w > cpus:
            rows.append({"workers": w, "skipped": "more workers than CPUs"})
            continue
        lg_cpus = ",".join(str(c) for c in range(cpus - lg_threads, cpus))
        for e in engines:
            for wl in workloads:
                tag = "%s-w%d-%s" % (bench.slug(e), w, wl)
                print("%s ..." % tag, end=" ", flush=True)
                t0 = time.time()
                eng = bench.Engine(e, bins, bench.free_port(args.port), 0, "/usr/bin/turnserver",
                                   threads=w)
                try:
                    pid = eng.start(os.path.join(outdir, "raw"), tag)
                except RuntimeError as err:
                    print(err, flush=True)
                    rows.append({"workers": w, "engine": e, "workload": wl, "error": str(err)})
                    continue
                try:
                    if wl == "sat":
                        load = ["--agents", str(plan.sat_agents * w), "--max-rate",
                                "--size", str(plan.sat_size), "--duration",
                                "%ds" % plan.sat_duration, "--ramp", "%ds" % plan.ramp]
                    else:
                        load = ["--agents", str(plan.audio_agents * w), "--rate",
                                str(plan.audio_rate), "--size", str(plan.audio_size),
                                "--duration", "%ds" % plan.audio_duration,
                                "--ramp", "%ds" % plan.audio_ramp]
                    out = os.path.join(outdir, "raw", tag + ".json")
                    cmd = ["taskset", "-c", lg_cpus, bins["loadgen"], "--server",
                           "127.0.0.1:%d" % eng.port, "--realm", bench.REALM, "--user",
                           bench.USER, "--threads", str(lg_threads), "--server-pid", str(pid),
                           "--json", out, "--quiet"] + load
                    with open(os.path.join(outdir, "raw", tag + ".log"), "w") as f:
                        bench.subprocess.run(cmd, stdout=f, stderr=bench.subprocess.STDOUT,
                                             timeout=600, preexec_fn=bench.raise_nofile)
                    fig = None
                    if os.path.exists(out):
                        with open(out) as f:
                            fig = bench.Runner.traffic_figures(json.load(f))
                    rows.append({"workers": w, "engine": e, "workload": wl,
                                 "loadgen_threads": lg_threads, "shared_cpus": shared,
                                 "figures": fig})
                finally:
                    eng.stop()
                print("%.0f s" % (time.time() - t0), flush=True)
    doc = {"started": started.strftime("%Y-%m-%d %H:%M"), "machine": bench.machine(),
           "rows": rows}
    with open(os.path.join(outdir, "scaling.json"), "w") as f:
        json.dump(doc, f, indent=2)
    md = ["# Scaling: %s, %s CPUs, kernel %s (%s)\n" % (
        doc["machine"]["cpu_model"], cpus, doc["machine"]["kernel"], doc["started"]),
        "| engine | workload | workers | loadgen threads | relayed pps | relay cores | "
        "relayed pkts / CPU-s | loss | p99 us | note |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r or "error" in r:
            md.append("| %s | %s | %d | | | | | | | %s |" % (
                r.get("engine", "all"), r.get("workload", "all"), r["workers"],
                r.get("skipped") or r.get("error")))
            continue
        f = r["figures"] or {}
        md.append("| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s |" % (
            r["engine"], r["workload"], r["workers"], r["loadgen_threads"],
            bench.fmt(f.get("relayed_pps")), bench.fmt(f.get("relay_cores"), 2),
            bench.fmt(f.get("relayed_per_cpu_s")), bench.fmt(f.get("loss"), 4),
            bench.fmt(f.get("p99_us")),
            "shares CPUs with loadgen" if r["shared_cpus"] else ""))
    text = "\n".join(md) + "\n"
    with open(os.path.join(outdir, "scaling.md"), "w") as f:
        f.write(text)
    print(text)
    print("written: %s/scaling.{json,md}" % outdir)


if __name__ == "__main__":
    main()
