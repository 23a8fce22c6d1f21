#!/usr/bin/env bash
# Flame graphs of a relay under load, one command:
#
#   tuning/flamegraph.sh [--engine uturn-uring|uturn-portable|bare|bare-best|coturn[:opts]]
#                        [--workload sat|burst|audio] [--seconds 10] [--out DIR]
#
# Starts the engine pinned to CPU 0 (as tuning/bench.py does), drives it with loadgen on the
# last CPU, records the relay with perf's software clock (`-e cpu-clock`: works without a
# hardware PMU, in VMs too) and call graphs, and renders an SVG with inferno. Also prints where
# the samples fell: user space vs kernel, and the top kernel and user symbols, which is what
# tuning/README.md quotes.
#
# Needs perf (linux-perf / linux-tools) and inferno (`cargo install inferno`; installed here
# when missing). Run as root, or with kernel.perf_event_paranoid <= 1.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=uturn-uring
workload=sat
seconds=10
out=tuning/results/flamegraphs
freq=2999
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) engine=$2; shift 2 ;;
        --workload) workload=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --freq) freq=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
if ! command -v inferno-flamegraph >/dev/null; then
    echo "inferno is missing: cargo install inferno" >&2
    cargo install --locked inferno
fi
[ -n "${NO_BUILD:-}" ] || cargo build --release -p uturn -p loadgen >&2

mkdir -p "$out"
tag="$(python3 -c 'import sys; sys.path.insert(0, "tuning"); import bench; print(bench.slug(sys.argv[1]))' "$engine")-$workload"
last=$(( $(nproc) - 1 ))
port=$(python3 - <<'EOF'
import socket
for p in range(34880, 35080):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()
EOF
)

# The engine's command line comes from the benchmark harness, so both profile the same thing.
read -r -a cmd < <(python3 - "$engine" "$port" <<'EOF'
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "tuning"))
import bench
bins = {b: os.path.join(os.getcwd(), "target", "release", b) for b in ("uturn", "loadgen", "udp-forward")}
e = bench.Engine(sys.argv[1], bins, int(sys.argv[2]), 0, "/usr/bin/turnserver")
print(" ".join(e.cmd))
opts = sys.argv[1].partition(":")[2]
print(opts, file=open("/tmp/uturn-flame-opts", "w"))
EOF
)
opts=$(cat /tmp/uturn-flame-opts)
if [[ $engine == uturn-* && -n $opts ]]; then export UTURN_DRIVER=${opts//+/,}; fi

"${cmd[@]}" >"$out/$tag.relay.log" 2>&1 &
relay=$!
trap 'kill $relay 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    python3 -c "import sys; sys.path.insert(0,'tuning'); import bench; sys.exit(0 if bench.stun_ping($port) else 1)" && break
    sleep 0.1
done
# The relay process itself (taskset execs into it).
pid=$relay

case "$workload" in
    sat) load=(--agents 20 --max-rate --size 100) ;;
    burst) load=(--agents 20 --max-rate --size 100 --gso-burst 16) ;;
    audio) load=(--agents 1000 --rate 50 --size 160) ;;
    *) echo "workload: sat, burst or audio" >&2; exit 2 ;;
esac
ramp=2
taskset -c "$last" target/release/loadgen --server "127.0.0.1:$port" --realm uturn.local \
    --user demo:secret --threads 1 --quiet --server-pid "$pid" --ramp "${ramp}s" \
    --duration "$((seconds + 2))s" --json "$out/$tag.loadgen.json" "${load[@]}" \
    >"$out/$tag.loadgen.txt" 2>&1 &
lg=$!
sleep $((ramp + 1))
perf record -e cpu-clock -F "$freq" -g -p "$pid" -o "$out/$tag.perf.data" -- sleep "$seconds" \
    2>"$out/$tag.perf.log"
wait $lg || true
kill $relay 2>/dev/null || true
wait $relay 2>/dev/null || true
trap - EXIT

perf script -i "$out/$tag.perf.data" 2>/dev/null >"$out/$tag.perf.txt"
inferno-collapse-perf --all <"$out/$tag.perf.txt" >"$out/$tag.folded"
inferno-flamegraph --title "$engine, $workload ($(uname -r), cpu-clock)" \
    <"$out/$tag.folded" >"$out/$tag.svg"

# Where the samples fell: the leaf frame's address decides kernel or user space.
python3 - "$out/$tag.folded" "$out/$tag.summary.txt" <<'EOF'
import collections, sys
folded, dest = sys.argv[1], sys.argv[2]
kernel = user = 0
ksym, usym = collections.Counter(), collections.Counter()
for line in open(folded):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    leaf = stack.split(";")[-1]
    if leaf.endswith("_[k]"):
        kernel += n
        ksym[leaf[:-4]] += n
    else:
        user += n
        usym[leaf] += n
total = max(kernel + user, 1)
lines = ["sample weight %d: kernel %.1f %%, user %.1f %%" % (total, 100 * kernel / total, 100 * user / total),
         "top kernel symbols:"]
lines += ["  %5.1f %%  %s" % (100 * n / total, s) for s, n in ksym.most_common(12)]
lines += ["top user symbols:"]
lines += ["  %5.1f %%  %s" % (100 * n / total, s) for s, n in usym.most_common(12)]
open(dest, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
tail -3 "$out/$tag.loadgen.txt" || true
rm -f "$out/$tag.perf.data" "$out/$tag.perf.txt" "$out/$tag.perf.log"
echo "flame graph: $out/$tag.svg (folded stacks: $out/$tag.folded)"
