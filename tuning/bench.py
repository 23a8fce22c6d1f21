#!/usr/bin/env python3
"""The end-to-end relay benchmark: one command, one machine, every engine under the same loadgen
command lines. See tuning/README.md for what it measures and how to read the results.

Engines (each started fresh for each workload, pinned to the relay core):
  bare            udp-forward turn: epoll + recvmmsg/sendmmsg + the sans-IO server (naive kernel path)
  bare-best       the same with the best kernel path found (GSO + GRO, see README)
  uturn-uring     uturn, one worker, io_uring backend
  uturn-portable  uturn, one worker, epoll + recvmmsg/sendmmsg backend
  coturn          Debian's coturn (turnserver), one relay thread

Workloads:
  sat      saturating ChannelData over a few heavy flows (--max-rate), then the highest offered
           rate with < 0.1 % loss, then latency at 50 % and 80 % of it
  burst    the same saturating run with loadgen's GSO-burst sending (a stand-in for a NIC's GRO),
           identical for every engine
  audio    many small flows like audio calls: 1,000 agents, 50 packets/s of 160 bytes
  churn    authenticated allocations per second
  idle10k, idle50k   resident memory per idle allocation

Standard library only (Python 3.9+). Run as root for the open-file limits (50,000 sockets).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNING = os.path.join(ROOT, "tuning")
REALM = "uturn.local"
USER = "demo:secret"
RELAY_IP = "127.0.0.2"  # relay addresses off 127.0.0.1, whose ephemeral ports loadgen uses
RELAY_PORTS = (10000, 65535)  # 50,000 idle allocations need more than the default 16,384
NOFILE = 1 << 20

ENGINES = ["bare", "bare-best", "uturn-uring", "uturn-portable", "coturn"]
# An engine may carry kernel-path options for experiments: NAME:key=value+key=value. For uturn they go
# to the driver through UTURN_DRIVER (gso, gro, ring_entries, recv_buffers, send_buffers, send_zc,
# sqpoll, busy_poll); for
# the bare reference, gso=1, gro=1 and connect=1 turn on its --gso, --gro and --connect.
WORKLOADS = ["sat", "burst", "audio", "churn", "idle10k", "idle50k"]
# Not in the default set: the saturating run alone, without the loss search and latency runs
# (for A/B experiments).
EXTRA_WORKLOADS = ["satmax"]


# ---------------------------------------------------------------------------------------------
# Plans: how long and how hard, quick or full.

class Plan:
    def __init__(self, quick):
        self.quick = quick
        self.sat_agents = 20
        self.sat_size = 100
        self.sat_duration = 3 if quick else 10
        self.ramp = 1
        # Offered load as fractions of the saturating throughput, tried in order; the highest
        # with < 0.1 % loss is the "max pps" figure.
        self.search = [0.5, 0.75, 1.0] if quick else [0.4, 0.55, 0.7, 0.8, 0.9, 1.0, 1.1]
        self.loss_limit = 0.001
        self.lat_duration = 3 if quick else 10
        self.audio_agents = 1000
        self.audio_rate = 50
        self.audio_size = 160
        self.audio_ramp = 3 if quick else 5
        self.audio_duration = 5 if quick else 20
        self.churn_agents = 256
        self.churn_warmup = 1 if quick else 2
        self.churn_duration = 3 if quick else 10
        self.idle_hold = 2 if quick else 5
        self.burst = 16


# ---------------------------------------------------------------------------------------------
# Processes.

def raise_nofile():
    """In the child before exec: a hard and soft open-file limit of NOFILE (root may raise it)."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nofile_hard():
    """The open-file limit children will get: NOFILE when it can be raised, the hard limit
    otherwise."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, max(hard, NOFILE)))
        hard = max(hard, NOFILE)
    except (ValueError, OSError):
        pass
    return hard


def stun_ping(port, timeout=0.2):
    """A STUN Binding request to 127.0.0.1:port; True when a Binding success comes back."""
    tid = os.urandom(12)
    req = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + tid
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(req, ("127.0.0.1", port))
        data, _ = s.recvfrom(2048)
        return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == tid
    except OSError:
        return False
    finally:
        s.close()


def slug(name):
    """A file-name-safe form of an engine spec (uturn-uring:gso=1+gro=1 -> uturn-uring_gso1_gro1)."""
    return name.replace(":", "_").replace("+", "_").replace("=", "")


def free_port(start):
    """The first UDP port from `start` on that nothing on 127.0.0.1 holds (a plain bind, which
    fails where a server with SO_REUSEPORT would share the port silently)."""
    for port in range(start, start + 200):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free UDP port in %d-%d" % (start, start + 199))


class Engine:
    """One relay under test: its command line and how it was started."""

    def __init__(self, spec, bins, port, core, coturn_bin, threads=1):
        self.name = spec
        name, _, opts = spec.partition(":")
        self.port = port
        self.core = core
        self.env = dict(os.environ)
        lo, hi = RELAY_PORTS
        listen = "127.0.0.1:%d" % port
        if name in ("bare", "bare-best"):
            self.cmd = [bins["udp-forward"], "turn", "--listen", listen, "--relay-ip", RELAY_IP,
                        "--relay-ports", "%d-%d" % (lo, hi), "--realm", REALM, "--user", USER]
            if name == "bare-best":
                self.cmd += BARE_BEST
            for kv in filter(None, opts.split("+")):
                k, _, v = kv.partition("=")
                if v in ("1", "on") and k in ("gso", "gro", "connect", "connect_relays",
                                              "connect_clients"):
                    self.cmd.append("--" + k.replace("_", "-"))
        elif name.startswith("uturn-"):
            backend = name.split("-", 1)[1]
            self.cmd = [bins["uturn"], "--listen", listen, "--relay-ip", RELAY_IP,
                        "--relay-ports", "%d-%d" % (lo, hi), "--realm", REALM, "--user", USER,
                        "--allow-loopback-peers", "--threads", str(threads), "--backend", backend,
                        "--log-level", "warn"]
            if opts:
                self.env["UTURN_DRIVER"] = opts.replace("+", ",")
        elif name == "coturn":
            self.cmd = [coturn_bin, "-n", "--listening-ip=127.0.0.1",
                        "--listening-port=%d" % port, "--relay-ip=" + RELAY_IP,
                        "--min-port=%d" % lo, "--max-port=%d" % hi, "--realm=" + REALM,
                        "--user=" + USER, "--lt-cred-mech", "--fingerprint", "--no-tls",
                        "--no-dtls", "--no-cli", "--relay-threads=%d" % threads,
                        "--allow-loopback-peers",
                        "--no-rfc5780", "--total-quota=0", "--user-quota=0",
                        "--log-file=/dev/null", "--no-stdout-log", "--simple-log",
                        "--pidfile=/tmp/uturn-bench-coturn.pid"]
        else:
            raise ValueError(name)
        # Pinned to `threads` CPUs from `core` up (uturn pins worker i to the i-th of them).
        cpus = ",".join(str(core + i) for i in range(threads))
        self.cmd = ["taskset", "-c", cpus] + self.cmd
        self.proc = None
        self.log = None

    def start(self, logdir, tag):
        self.log = open(os.path.join(logdir, "%s.relay.log" % tag), "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=raise_nofile, env=self.env)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited at start (see %s)" % (self.name, self.log.name))
            if stun_ping(self.port):
                return self.proc.pid
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("%s did not answer STUN within 15 s" % self.name)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.log:
            self.log.close()
            self.log = None


# The best kernel path found for the bare reference (tuning/README.md, part 2).
BARE_BEST = ["--gso", "--gro"]


def proc_cpu(pid):
    """(user, system) CPU seconds of a process so far."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
        fields = text[text.rindex(")") + 2:].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tck, int(fields[12]) / tck
    except (OSError, ValueError, IndexError):
        return None


class Runner:
    def __init__(self, args, bins, outdir):
        self.args = args
        self.bins = bins
        self.outdir = outdir
        self.raw = os.path.join(outdir, "raw")
        os.makedirs(self.raw, exist_ok=True)
        self.plan = Plan(args.quick)
        self.loadgen_core = args.loadgen_core
        self.coturn = shutil.which("turnserver") or "/usr/bin/turnserver"
        self.count = 0

    def loadgen(self, pid, port, tag, extra, timeout):
        """Runs loadgen against 127.0.0.1:port; returns its JSON report (or None)."""
        self.count += 1
        out = os.path.join(self.raw, tag + ".json")
        cmd = ["taskset", "-c", str(self.loadgen_core), self.bins["loadgen"],
               "--server", "127.0.0.1:%d" % port, "--realm", REALM, "--user", USER,
               "--threads", "1", "--server-pid", str(pid), "--json", out, "--quiet"] + extra
        log = os.path.join(self.raw, tag + ".log")
        if os.path.exists(out):
            os.remove(out)
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                    preexec_fn=raise_nofile).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if not os.path.exists(out):
            print("    %s: no report (exit %s, see %s)" % (tag, rc, log), flush=True)
            return None
        with open(out) as f:
            r = json.load(f)
        r["_exit"] = rc
        r["_cmd"] = " ".join(cmd[3:])
        return r

    def with_engine(self, name, tag, fn):
        e = Engine(name, self.bins, free_port(self.args.port), self.args.relay_core, self.coturn)
        try:
            pid = e.start(self.raw, tag)
        except RuntimeError as err:
            print("    %s: %s" % (tag, err), flush=True)
            return None
        try:
            cpu0 = proc_cpu(pid)
            result = fn(pid, e.port)
            cpu1 = proc_cpu(pid)
            if isinstance(result, dict) and cpu0 and cpu1:
                result["relay_user_s"] = round(cpu1[0] - cpu0[0], 3)
                result["relay_sys_s"] = round(cpu1[1] - cpu0[1], 3)
            return result
        finally:
            e.stop()
            time.sleep(0.5)

    # -- workloads ----------------------------------------------------------------------------

    def traffic_args(self, agents, size, duration, ramp, rate=None, burst=None):
        a = ["--agents", str(agents), "--size", str(size), "--duration", "%ds" % duration,
             "--ramp", "%ds" % ramp]
        a += ["--max-rate"] if rate is None else ["--rate", str(rate)]
        if burst:
            a += ["--gso-burst", str(burst)]
        return a

    @staticmethod
    def traffic_figures(r):
        if not r:
            return None
        srv = r.get("server") or {}
        t = r["traffic"]
        hops = srv.get("relay_hops_per_packet", 2)
        return {
            "received_pps": r["throughput"]["pps"],
            "sent_pps": r["throughput"]["sent_pps"],
            "relayed_pps": r["throughput"]["pps"] * hops,
            "loss": t["loss_ratio"],
            "relay_cpu_s": srv.get("cpu_seconds"),
            "relay_cores": srv.get("cpu_cores"),
            "relayed_per_cpu_s": None if srv.get("packets_per_cpu_second") is None
            else srv["packets_per_cpu_second"] * hops,
            "p50_us": r["latency_us"]["p50"],
            "p99_us": r["latency_us"]["p99"],
            "generator_limit": r["generator"]["limit"],
            "generator_cores": r["generator"]["cpu_cores"],
            "agents_failed": r["agents"]["failed"],
        }

    def sat(self, name, burst=None, search=True):
        p = self.plan
        label = "burst" if burst else "sat"
        tag = "%s-%s" % (slug(name), label)
        timeout = p.sat_duration * 4 + 60

        def run(pid, port):
            # 1. Saturating: every agent as fast as loadgen can.
            r = self.loadgen(pid, port, tag + "-max", self.traffic_args(
                p.sat_agents, p.sat_size, p.sat_duration, p.ramp, burst=burst), timeout)
            res = {"max_rate": self.traffic_figures(r)}
            if not r or burst or not search:
                return res
            # 2. The highest offered rate with < 0.1 % loss, as fractions of the saturating
            # throughput (received probes per second).
            sat_pps = max(r["throughput"]["pps"], 1.0)
            best = None
            steps = []
            for frac in p.search:
                rate = max(1, int(sat_pps * frac / p.sat_agents))
                rr = self.loadgen(pid, port, "%s-rate%d" % (tag, rate), self.traffic_args(
                    p.sat_agents, p.sat_size, p.sat_duration, p.ramp, rate=rate), timeout)
                f = self.traffic_figures(rr)
                if f is None:
                    break
                f["offered_pps"] = rate * p.sat_agents
                steps.append(f)
                if f["loss"] < p.loss_limit and f["agents_failed"] == 0:
                    best = f
                elif best is not None:
                    break
            # Nothing passed: step down from the lowest fraction until something does.
            frac = p.search[0]
            while best is None and frac > 0.05 and steps:
                frac /= 2
                rate = max(1, int(sat_pps * frac / p.sat_agents))
                rr = self.loadgen(pid, port, "%s-rate%d" % (tag, rate), self.traffic_args(
                    p.sat_agents, p.sat_size, p.sat_duration, p.ramp, rate=rate), timeout)
                f = self.traffic_figures(rr)
                if f is None:
                    break
                f["offered_pps"] = rate * p.sat_agents
                steps.append(f)
                if f["loss"] < p.loss_limit and f["agents_failed"] == 0:
                    best = f
            res["search"] = steps
            res["max_pps_lossless"] = best["received_pps"] if best else None
            # 3. Latency at 50 % and 80 % of that rate.
            base = best["offered_pps"] if best else sat_pps * p.search[0]
            for pct in (50, 80):
                rate = max(1, int(base * pct / 100 / p.sat_agents))
                rr = self.loadgen(pid, port, "%s-lat%d" % (tag, pct), self.traffic_args(
                    p.sat_agents, p.sat_size, p.lat_duration, p.ramp, rate=rate), timeout)
                res["lat%d" % pct] = self.traffic_figures(rr)
            return res

        return self.with_engine(name, tag, run)

    def audio(self, name):
        p = self.plan
        tag = "%s-audio" % slug(name)

        def run(pid, port):
            r = self.loadgen(pid, port, tag, self.traffic_args(
                p.audio_agents, p.audio_size, p.audio_duration, p.audio_ramp,
                rate=p.audio_rate), p.audio_duration * 3 + 90)
            return self.traffic_figures(r)

        return self.with_engine(name, tag, run)

    def churn(self, name):
        p = self.plan
        tag = "%s-churn" % slug(name)

        def run(pid, port):
            r = self.loadgen(pid, port, tag, [
                "--mode", "churn", "--agents", str(p.churn_agents),
                "--ramp", "%ds" % p.churn_warmup, "--duration", "%ds" % p.churn_duration],
                p.churn_duration * 3 + 60)
            if not r:
                return None
            srv = r.get("server") or {}
            return {
                "allocations_per_s": r["allocations"]["per_second"],
                "allocations_per_cpu_s": srv.get("per_cpu_second"),
                "relay_cores": srv.get("cpu_cores"),
                "failed": r["allocations"]["failed"],
                "allocate_p50_us": r["allocation_us"]["p50"],
                "allocate_p99_us": r["allocation_us"]["p99"],
                "generator_limit": r["generator"]["limit"],
            }

        return self.with_engine(name, tag, run)

    def idle(self, name, n):
        p = self.plan
        tag = "%s-idle%dk" % (slug(name), n // 1000)
        # Each allocation is a socket in the relay and one in loadgen.
        hard = nofile_hard()
        if hard < n + 1000:
            print("    %s: skipped: the open-file hard limit is %d, %d allocations need more "
                  "(raising it needs CAP_SYS_RESOURCE)" % (tag, hard, n), flush=True)
            return {"skipped": "open-file hard limit %d < %d" % (hard, n + 1000)}

        def run(pid, port):
            r = self.loadgen(pid, port, tag, [
                "--mode", "idle", "--agents", str(n), "--ramp", "0s",
                "--duration", "%ds" % p.idle_hold, "--setup-timeout", "30s"], 600)
            if not r:
                return None
            srv = r.get("server") or {}
            k = r.get("kernel") or {}
            return {
                "held": r["allocations"]["held"],
                "failed": r["allocations"]["failed"],
                "setup_per_s": r["allocations"]["per_second"],
                "rss_before_kib": srv.get("rss_before_kib"),
                "rss_held_kib": srv.get("rss_held_kib"),
                "rss_per_allocation_bytes": srv.get("rss_per_allocation_bytes"),
                "kernel_slab_per_allocation_bytes": k.get("slab_per_allocation_bytes"),
                "idle_cpu_cores": srv.get("idle_cpu_cores"),
            }

        return self.with_engine(name, tag, run)

    def workload(self, w, name):
        if w == "sat":
            return self.sat(name)
        if w == "satmax":
            return self.sat(name, search=False)
        if w == "burst":
            return self.sat(name, burst=self.plan.burst)
        if w == "audio":
            return self.audio(name)
        if w == "churn":
            return self.churn(name)
        if w == "idle10k":
            return self.idle(name, 10_000)
        if w == "idle50k":
            return self.idle(name, 50_000)
        raise ValueError(w)


# ---------------------------------------------------------------------------------------------
# The machine.

def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cmd_out(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def machine():
    lscpu = cmd_out(["lscpu"]) or ""
    info = {}
    for line in lscpu.splitlines():
        k, _, v = line.partition(":")
        info[k.strip()] = v.strip()
    mem_kib = None
    for line in (read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    sysctls = {}
    for k in ["net.core.rmem_default", "net.core.rmem_max", "net.core.wmem_default",
              "net.core.wmem_max", "net.core.netdev_max_backlog", "net.ipv4.ip_local_port_range",
              "net.core.busy_poll", "net.core.busy_read"]:
        sysctls[k] = read("/proc/sys/" + k.replace(".", "/"))
    return {
        "cpu_model": info.get("Model name"),
        "cpus": os.cpu_count(),
        "threads_per_core": info.get("Thread(s) per core"),
        "hypervisor": info.get("Hypervisor vendor"),
        "virtualization": cmd_out(["systemd-detect-virt"]),
        "pmu": "software events only" if not os.path.exists(
            "/sys/bus/event_source/devices/cpu/type") else "hardware",
        "mem_gib": round(mem_kib / 1048576, 1) if mem_kib else None,
        "kernel": platform.release(),
        "os": (cmd_out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]) or ""),
        "rustc": cmd_out(["rustc", "--version"]),
        "coturn": cmd_out(["turnserver", "--version"]),
        "git": cmd_out(["git", "-C", ROOT, "describe", "--always", "--dirty"]),
        "loadavg": read("/proc/loadavg"),
        "sysctl": sysctls,
    }


# ---------------------------------------------------------------------------------------------
# Output: markdown, SVG.

def fmt(v, digits=0, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float) and digits == 0:
        v = round(v)
    if isinstance(v, (int, float)) and abs(v) >= 10000 and digits == 0:
        return "{:,}".format(int(v)) + unit
    if digits:
        return ("{:.%df}" % digits).format(v) + unit
    return str(v) + unit


def get(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def first(a, b):
    """`a` unless it is missing (a measured 0 counts)."""
    return a if a is not None else b


def figures(results, engine):
    """The headline figures of one engine, flat."""
    r = results.get(engine, {})
    return {
        "sat_per_cpu": first(get(r, "sat", "max_rate", "relayed_per_cpu_s"),
                             get(r, "satmax", "max_rate", "relayed_per_cpu_s")),
        "sat_loss": first(get(r, "sat", "max_rate", "loss"), get(r, "satmax", "max_rate", "loss")),
        "burst_per_cpu": get(r, "burst", "max_rate", "relayed_per_cpu_s"),
        "max_pps": get(r, "sat", "max_pps_lossless"),
        "lat50_p50": get(r, "sat", "lat50", "p50_us"),
        "lat50_p99": get(r, "sat", "lat50", "p99_us"),
        "lat80_p50": get(r, "sat", "lat80", "p50_us"),
        "lat80_p99": get(r, "sat", "lat80", "p99_us"),
        "audio_per_cpu": get(r, "audio", "relayed_per_cpu_s"),
        "audio_p50": get(r, "audio", "p50_us"),
        "audio_p99": get(r, "audio", "p99_us"),
        "audio_loss": get(r, "audio", "loss"),
        "churn": get(r, "churn", "allocations_per_s"),
        "churn_per_cpu": get(r, "churn", "allocations_per_cpu_s"),
        "rss10k": get(r, "idle10k", "rss_per_allocation_bytes"),
        "rss50k": get(r, "idle50k", "rss_per_allocation_bytes"),
        "slab50k": get(r, "idle50k", "kernel_slab_per_allocation_bytes"),
    }


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


# The audio workload's name in the tables (``--audio-agents`` changes it).
AUDIO = "1,000 audio flows"


def audio_label(agents):
    return "{:,} audio flows".format(agents)


def targets(results):
    u = figures(results, "uturn-uring")
    c = figures(results, "coturn")
    rows = []

    def row(name, value, goal, met, note=""):
        rows.append({"target": name, "measured": value, "goal": goal, "met": met, "note": note})

    # Like against like: plain sends against plain, GSO bursts against GSO bursts.
    r = ratio(u["sat_per_cpu"], c["sat_per_cpu"])
    rb = ratio(u["burst_per_cpu"], c["burst_per_cpu"])
    row("saturating ChannelData, relayed packets per CPU-second vs coturn",
        None if r is None else round(r, 2), ">= 2.0", None if r is None else r >= 2.0,
        "plain sends; with GSO bursts: %s" % ("-" if rb is None else "%.2f" % rb))
    r = ratio(u["audio_per_cpu"], c["audio_per_cpu"])
    p99_ok = None if u["audio_p99"] is None or c["audio_p99"] is None else \
        u["audio_p99"] <= c["audio_p99"]
    row(AUDIO + ", relayed packets per CPU-second vs coturn",
        None if r is None else round(r, 2), ">= 1.1", None if r is None else r >= 1.1)
    row(AUDIO + ", p99 latency vs coturn",
        None if u["audio_p99"] is None else "%s vs %s us" % (u["audio_p99"], c["audio_p99"]),
        "<= coturn", p99_ok)
    r = ratio(u["churn"], c["churn"])
    row("authenticated allocations per second vs coturn",
        None if r is None else round(r, 2), ">= 5.0", None if r is None else r >= 5.0)
    rss = u["rss50k"] if u["rss50k"] is not None else u["rss10k"]
    row("resident memory per idle allocation (user space)",
        None if rss is None else "%d bytes" % rss, "<= 2048 bytes",
        None if rss is None else rss <= 2048)
    return rows


def markdown(doc):
    m = doc["machine"]
    res = doc["results"]
    engines = [e for e in doc["engines"] if e in res]
    out = []
    out.append("# uturn end-to-end benchmark (%s)\n" % ("quick" if doc["quick"] else "full"))
    out.append("%s. Machine: %s, %s CPUs, %s GiB, kernel %s, %s (%s); PMU: %s. "
               "Load average at start %s, at end %s. Relay pinned to CPU %s, loadgen to CPU %s "
               "(one thread).\n" % (
                   doc["started"], m["cpu_model"], m["cpus"], m["mem_gib"], m["kernel"],
                   m["os"], m["virtualization"] or m["hypervisor"] or "bare metal", m["pmu"],
                   m["loadavg"], doc["loadavg_end"], doc["relay_core"], doc["loadgen_core"]))
    out.append("Packets are 100-byte probes in ChannelData unless said otherwise; every probe "
               "crosses the relay twice (client to relay to relay to client), and *relayed "
               "packets* count both crossings. CPU is the relay process's user + system time "
               "over loadgen's measured window.\n")
    hdr = ["figure"] + engines
    rows = []

    def add(label, key, digits=0, unit=""):
        rows.append([label] + [fmt(figures(res, e)[key], digits, unit) for e in engines])

    add("(a) saturating: relayed packets per CPU-second", "sat_per_cpu")
    add("(a) saturating: loss at max rate", "sat_loss", 3)
    add("(a) GSO-burst sending (x%d): relayed packets per CPU-second" % doc["burst"],
        "burst_per_cpu")
    add("(a) max received pps at < 0.1 % loss", "max_pps")
    add("(a) p50 / p99 latency at 50 % of max, us", "lat50_p50")
    rows[-1] = [rows[-1][0]] + ["%s / %s" % (fmt(figures(res, e)["lat50_p50"]),
                                             fmt(figures(res, e)["lat50_p99"])) for e in engines]
    rows.append(["(a) p50 / p99 latency at 80 % of max, us"] + [
        "%s / %s" % (fmt(figures(res, e)["lat80_p50"]), fmt(figures(res, e)["lat80_p99"]))
        for e in engines])
    add("(b) " + AUDIO + ": relayed packets per CPU-second", "audio_per_cpu")
    rows.append(["(b) " + AUDIO + ": p50 / p99 latency, us"] + [
        "%s / %s" % (fmt(figures(res, e)["audio_p50"]), fmt(figures(res, e)["audio_p99"]))
        for e in engines])
    add("(b) " + AUDIO + ": loss", "audio_loss", 4)
    add("(c) authenticated allocations per second", "churn")
    add("(c) allocations per relay CPU-second", "churn_per_cpu")
    add("(d) RSS per idle allocation, 10,000 held, bytes", "rss10k")
    add("(d) RSS per idle allocation, 50,000 held, bytes", "rss50k")
    add("(d) kernel slab per allocation, 50,000 held, bytes (machine-wide)", "slab50k")
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "---|" * len(hdr))
    for r in rows:
        out.append("| " + " | ".join(r) + " |")
    out.append("")
    out.append("## Targets (uturn-uring against coturn, this run)\n")
    out.append("| target | measured | goal | met |")
    out.append("|---|---|---|---|")
    for t in doc["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        out.append("| %s | %s | %s | %s |" % (t["target"], fmt(t["measured"], 2)
                                              if isinstance(t["measured"], float)
                                              else fmt(t["measured"]), t["goal"], met))
    out.append("")
    out.append("## Where the CPU went (relay user / system seconds over each whole loadgen run)\n")
    out.append("| workload | " + " | ".join(engines) + " |")
    out.append("|---|" + "---|" * len(engines))
    for w in doc["workloads"]:
        cells = []
        for e in engines:
            r = res.get(e, {}).get(w) or {}
            u, s = r.get("relay_user_s"), r.get("relay_sys_s")
            cells.append("-" if u is None else "%.2f / %.2f (%d %% sys)" % (
                u, s, round(100 * s / max(u + s, 1e-9))))
        out.append("| %s | %s |" % (w, " | ".join(cells)))
    out.append("")
    skipped = ["%s on %s: %s" % (w, e, r[w]["skipped"]) for e in engines
               for r in [res.get(e, {})] for w in doc["workloads"]
               if isinstance(r.get(w), dict) and "skipped" in r[w]]
    failed = ["%s on %s" % (w, e) for e in engines for w in doc["workloads"]
              if res.get(e, {}).get(w) is None]
    if skipped or failed:
        out.append("Not measured: " + "; ".join(skipped + ["%s (no result, see raw/)" % f
                                                          for f in failed]) + ".\n")
    out.append("Raw loadgen reports and command lines: `raw/`. Engines' command lines:\n")
    for e, c in doc["commands"].items():
        out.append("- %s: `%s`" % (e, c))
    out.append("")
    return "\n".join(out)


COLORS = {"bare": "#9e9e9e", "bare-best": "#616161", "uturn-uring": "#1565c0",
          "uturn-portable": "#64b5f6", "coturn": "#e65100"}


def svg(doc):
    """Small multiples: one bar chart per headline figure, one bar per engine."""
    res = doc["results"]
    engines = [e for e in doc["engines"] if e in res]
    panels = [
        ("relayed pkts / CPU-s, saturating", "sat_per_cpu"),
        ("relayed pkts / CPU-s, GSO-burst", "burst_per_cpu"),
        ("max pps at < 0.1 % loss", "max_pps"),
        ("p99 latency at 80 % of max (us)", "lat80_p99"),
        ("relayed pkts / CPU-s, " + AUDIO, "audio_per_cpu"),
        ("p99 latency, audio flows (us)", "audio_p99"),
        ("allocations / s (authenticated)", "churn"),
        ("RSS bytes / idle allocation (50k)", "rss50k"),
    ]
    cols, pw, ph = 4, 260, 200
    rows = (len(panels) + cols - 1) // cols
    W, H = cols * pw + 20, rows * ph + 90
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
         'font-family="sans-serif" font-size="11">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="10" y="20" font-size="14">uturn benchmark %s (%s): %s, %s CPUs, kernel %s'
         '</text>' % (doc["started"], "quick" if doc["quick"] else "full",
                      esc(doc["machine"]["cpu_model"]), doc["machine"]["cpus"],
                      esc(doc["machine"]["kernel"]))]
    # Legend.
    x = 10
    for e in engines:
        o.append('<rect x="%d" y="30" width="10" height="10" fill="%s"/>' % (x, COLORS.get(e.split(":")[0], "#888888")))
        o.append('<text x="%d" y="39">%s</text>' % (x + 14, e))
        x += 20 + 7 * len(e)
    for i, (title, key) in enumerate(panels):
        px, py = 10 + (i % cols) * pw, 55 + (i // cols) * ph
        vals = [figures(res, e)[key] for e in engines]
        top = max([v for v in vals if v is not None] or [1]) or 1
        o.append('<text x="%d" y="%d" font-weight="bold">%s</text>' % (px, py + 12, esc(title)))
        base, height = py + ph - 25, ph - 55
        bw = (pw - 30) / max(len(engines), 1)
        for j, (e, v) in enumerate(zip(engines, vals)):
            bx = px + 5 + j * bw
            if v is None:
                o.append('<text x="%.1f" y="%d" fill="#999">n/a</text>' % (bx + 2, base - 2))
                continue
            h = height * v / top
            o.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>' % (
                bx, base - h, bw - 6, h, COLORS.get(e.split(":")[0], "#888888")))
            o.append('<text x="%.1f" y="%.1f" font-size="9">%s</text>' % (
                bx, base - h - 3, fmt(v) if v >= 1 else fmt(v, 3)))
        o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (
            px, base, px + pw - 25, base))
    o.append("</svg>")
    return "\n".join(o)


def esc(s):
    return (str(s) if s is not None else "").replace("&", "&amp;").replace("<", "&lt;")


# ---------------------------------------------------------------------------------------------

def build(no_build):
    bins = {b: os.path.join(ROOT, "target", "release", b) for b in ("uturn", "loadgen",
                                                                     "udp-forward")}
    if not no_build:
        print("building release binaries (cargo build --release -p uturn -p loadgen)", flush=True)
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "uturn", "-p",
                        "loadgen"], cwd=ROOT, check=True)
    for b, p in bins.items():
        if not os.path.exists(p):
            sys.exit("missing %s: build it (or drop --no-build)" % p)
    return bins


def ensure_coturn():
    if shutil.which("turnserver"):
        return
    script = os.path.join(ROOT, "scripts", "install-deps.sh")
    print("coturn missing: installing it", flush=True)
    if os.path.exists(script):
        subprocess.run([script], check=False)
    if not shutil.which("turnserver"):
        subprocess.run(["apt-get", "update"], check=False)
        subprocess.run(["apt-get", "install", "-y", "coturn"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    # Debian starts the packaged service; the benchmark runs its own instances.
    subprocess.run(["systemctl", "stop", "coturn"], check=False, capture_output=True)


def loadgen_has(bins, flag):
    h = cmd_out([bins["loadgen"], "--help"]) or ""
    return flag in h


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (minutes, not an hour)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--out", help="output directory (default tuning/results/<mode>-<time>)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries in target/release")
    ap.add_argument("--relay-core", type=int, default=0)
    ap.add_argument("--loadgen-core", type=int, default=None,
                    help="default: the last CPU")
    ap.add_argument("--port", type=int, default=34780)
    ap.add_argument("--audio-agents", type=int, default=None,
                    help="agents of the audio workload (default 1,000; fewer for experiments "
                         "on a machine too small or busy for 1,000)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run everything N times; the tables show each figure's median")
    args = ap.parse_args()
    if args.loadgen_core is None:
        args.loadgen_core = (os.cpu_count() or 2) - 1
    engines = [e for e in args.engines.split(",") if e]
    workloads = [w for w in args.workloads.split(",") if w]
    for e in engines:
        if e.split(":")[0] not in ENGINES:
            sys.exit("unknown engine %s (have %s)" % (e, ", ".join(ENGINES)))
    for w in workloads:
        if w not in WORKLOADS + EXTRA_WORKLOADS:
            sys.exit("unknown workload %s (have %s)" % (w, ", ".join(WORKLOADS)))
    if "coturn" in engines:
        ensure_coturn()
    bins = build(args.no_build)
    if "burst" in workloads and not loadgen_has(bins, "--gso-burst"):
        print("note: this loadgen has no --gso-burst; skipping the burst workload", flush=True)
        workloads.remove("burst")
    started = datetime.datetime.now()
    label = "%s-%s" % ("quick" if args.quick else "full", started.strftime("%Y%m%d-%H%M%S"))
    outdir = args.out or os.path.join(TUNING, "results", label)
    os.makedirs(outdir, exist_ok=True)
    runner = Runner(args, bins, outdir)
    if args.audio_agents:
        runner.plan.audio_agents = args.audio_agents
    global AUDIO
    AUDIO = audio_label(runner.plan.audio_agents)
    mach = machine()
    print("machine: %s, %s CPUs, kernel %s, load %s" % (
        mach["cpu_model"], mach["cpus"], mach["kernel"], mach["loadavg"]), flush=True)
    runs = []
    for rep in range(args.repeat):
        if args.repeat > 1:
            # Each repeat's reports and logs apart (raw/r1, raw/r2, ...), none overwritten.
            runner.raw = os.path.join(outdir, "raw", "r%d" % (rep + 1))
            os.makedirs(runner.raw, exist_ok=True)
        results = {e: {} for e in engines}
        # Workload-major: the engines of one workload run back to back, so that whatever else
        # the machine does shifts them alike.
        for w in workloads:
            for e in engines:
                t0 = time.time()
                print("[%d/%d] %s on %s ..." % (rep + 1, args.repeat, w, e), end=" ", flush=True)
                results[e][w] = runner.workload(w, e)
                print("%.0f s" % (time.time() - t0), flush=True)
        runs.append(results)
    results = pick_median(runs, engines, workloads)
    doc = {
        "schema": 1,
        "quick": args.quick,
        "started": started.strftime("%Y-%m-%d %H:%M"),
        "machine": mach,
        "loadavg_end": read("/proc/loadavg"),
        "relay_core": args.relay_core,
        "loadgen_core": args.loadgen_core,
        "burst": runner.plan.burst,
        "audio_agents": runner.plan.audio_agents,
        "engines": engines,
        "workloads": workloads,
        "commands": {e: " ".join(Engine(e, bins, args.port, args.relay_core,
                                        runner.coturn).cmd) for e in engines},
        "results": results,
        "repeats": runs if args.repeat > 1 else None,
    }
    doc["targets"] = targets(results)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(doc, f, indent=2)
    md = markdown(doc)
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(outdir, "results.svg"), "w") as f:
        f.write(svg(doc))
    print(md)
    print("written: %s/results.{json,md,svg}" % outdir)


def median_of(values):
    """The median of each figure across repeats: numbers (None where a repeat lacks one) are
    reduced to their median, dicts recursively, anything else (lists, strings) is taken from
    the first repeat that has it."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, bool) for v in present) or all(isinstance(v, str) for v in present):
        return present[0]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return statistics.median(present)
    if all(isinstance(v, dict) for v in present):
        keys = []
        for v in present:
            keys += [k for k in v if k not in keys]
        return {k: median_of([v.get(k) for v in present]) for k in keys}
    return present[0]


def pick_median(runs, engines, workloads):
    """Each figure's median across repeats (see `median_of`); the repeats themselves are kept
    in the JSON."""
    if len(runs) == 1:
        return runs[0]
    return {e: {w: median_of([r[e].get(w) for r in runs]) for w in workloads} for e in engines}


def pick_median_run(runs, engines, workloads):
    """For each engine and workload, the run whose headline figure is the median (for runs
    that must stay whole)."""
    if len(runs) == 1:
        return runs[0]
    key = {"sat": ("max_rate", "relayed_per_cpu_s"), "burst": ("max_rate", "relayed_per_cpu_s"),
           "satmax": ("max_rate", "relayed_per_cpu_s"),
           "audio": ("relayed_per_cpu_s",), "churn": ("allocations_per_s",),
           "idle10k": ("rss_per_allocation_bytes",), "idle50k": ("rss_per_allocation_bytes",)}
    out = {e: {} for e in engines}
    for e in engines:
        for w in workloads:
            cands = [r[e][w] for r in runs if r[e].get(w)]
            vals = [(get(c, *key[w]) or 0, i) for i, c in enumerate(cands)]
            if not vals:
                out[e][w] = None
                continue
            med = statistics.median_low([v for v, _ in vals])
            out[e][w] = cands[next(i for v, i in vals if v == med)]
    return out


if __name__ == "__main__":
    main()
