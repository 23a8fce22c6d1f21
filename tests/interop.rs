//! Interoperability with a TURN client no one here wrote: coturn's `turnutils_uclient` (Debian
//! package `coturn`), talking through uturn to coturn's `turnutils_peer`, an echo server on
//! loopback. Scenarios, each against a relay of its own so that its metrics are its own:
//!
//! - Send/Data: `-c -s`, 4 clients, no channels;
//! - channels: `-c`, ChannelBind and ChannelData;
//! - client to client: `-y -c -s`, two allocations relaying to each other;
//! - RTP/RTCP pairs: the default mode, EVEN-PORT with R, then an Allocate with the
//!   RESERVATION-TOKEN (one worker: a token is known only to the worker that issued it).
//!
//! Over TCP and TLS (RFC 8656 section 3.1, `uclient_over_tcp_and_tls`): Send/Data with `-t`
//! and with `-t -S`, and RFC 6062 TCP relaying between two of uclient's clients with `-T` and
//! `-T -S`. RFC 5780 (`natdiscovery_against_rfc5780_mode`): coturn's `turnutils_natdiscovery`
//! runs its mapping and filtering tests against uturn listening on 127.0.0.1 and 127.0.0.2,
//! two ports each.
//!
//! Two things in those transcripts are uclient's, not uturn's (both show against coturn's own
//! `turnserver` as well): over TLS uclient tries TLS contexts at random, and the older ones fail
//! with "sslv3 alert handshake failure" (uturn speaks TLS 1.2 and 1.3 only) before it connects
//! with one that works; and its `-P` mode (RFC 6062 with the peer connecting first) reports 50%
//! loss against either server, while `-P -S` cannot connect to either, because its "peer" opens
//! TLS to the relayed address, which is plain TCP.
//!
//! Where the tools are missing the test prints "skipped: ..." and passes, so that the default
//! `cargo test` works on a fresh machine; with `UTURN_REQUIRE_INTEROP=1` (CI, after
//! `scripts/install-deps.sh`) a missing tool is a failure instead.
//!
//! Known difference, checked rather than hidden: uclient picks channel numbers at random in
//! 0x4000-0x7FFF, the RFC 5766 range. RFC 8656 section 12 narrowed it to 0x4000-0x4FFF (the rest
//! collides with other protocols multiplexed on the port, RFC 7983) and section 11.2 makes a
//! ChannelBind outside it a 400. A channel-mode run binds two channels, so about fifteen runs in
//! sixteen end with "channel bind: error 400"; the channel scenario checks that every such run
//! is exactly that, and retries until a run draws numbers in range and relays all its data over
//! the channels.

#[macro_use]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

both_backends!(
    uclient_through_uturn,
    uclient_over_tcp_and_tls,
    natdiscovery_against_rfc5780_mode
);

const USER: &str = "alice";
const PASSWORD: &str = "alice-password";
/// Messages per client and their length.
const MESSAGES: usize = 10;
const LENGTH: usize = 120;
/// Channel-mode runs to try. A run makes two allocations and binds a channel on each, with a
/// number drawn uniformly from 0x4000-0x7FFF: both land in RFC 8656's range with probability
/// 1/16, so all runs failing has probability (15/16)^200, about 2.5e-6. A refused run ends at
/// once (about 30 ms), a good one takes uclient's usual 4 s.
const CHANNEL_ATTEMPTS: usize = 200;

/// The two coturn tools, or `None` (with the reason printed) where they are not installed.
fn coturn_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    };
    match (find("turnutils_uclient"), find("turnutils_peer")) {
        (Some(u), Some(p)) => Some((u, p)),
        _ => {
            let required = std::env::var("UTURN_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "turnutils_uclient/turnutils_peer not installed and UTURN_REQUIRE_INTEROP=1: \
                 run scripts/install-deps.sh"
            );
            eprintln!("skipped: turnutils_uclient not installed (run scripts/install-deps.sh)");
            None
        }
    }
}

/// coturn's echo peer on a free loopback port, ready when it echoes.
fn start_peer(bin: &PathBuf) -> (Proc, SocketAddr) {
    for _ in 0..3 {
        let addr = SocketAddr::new(LOCALHOST_V4, free_udp_port(LOCALHOST_V4));
        let mut cmd = Command::new(bin);
        cmd.args(["-L", "127.0.0.1", "-p", &addr.port().to_string()]);
        let mut proc = Proc::spawn(cmd).expect("spawn turnutils_peer");
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for _ in 0..50 {
            probe.send_to(b"ping", addr).expect("send");
            if let Some((echo, _)) = recv_within(&probe, Duration::from_millis(100)) {
                assert_eq!(echo, b"ping", "turnutils_peer echoes");
                return (proc, addr);
            }
            if proc.try_status().is_some() {
                break;
            }
        }
        eprintln!(
            "turnutils_peer did not answer on {addr}:\n{}",
            proc.output()
        );
    }
    panic!("turnutils_peer never started");
}

/// The outcome of one uclient run.
struct Run {
    command: String,
    code: Option<i32>,
    output: String,
}

impl Run {
    /// The last "tot_send_msgs=N, tot_recv_msgs=M" that uclient prints.
    fn totals(&self) -> Option<(usize, usize)> {
        let line = self
            .output
            .lines()
            .rev()
            .find(|l| l.contains("start_mclient: tot_send_msgs="))?;
        let num = |key: &str| -> Option<usize> {
            let rest = line.split(key).nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        Some((num("tot_send_msgs=")?, num("tot_recv_msgs=")?))
    }

    fn lost(&self) -> Option<usize> {
        let line = self
            .output
            .lines()
            .find(|l| l.contains("Total lost packets"))?;
        line.split("Total lost packets ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The relayed addresses uclient reports with -v.
    fn relayed(&self) -> Vec<SocketAddr> {
        self.output
            .lines()
            .filter_map(|l| l.split("Received relay addr: ").nth(1))
            .filter_map(|a| a.trim().parse().ok())
            .collect()
    }

    /// The command and its output without blank lines, for the test log.
    fn transcript(&self) -> String {
        let body: Vec<&str> = self
            .output
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        format!(
            "$ {}\n{}\n(exit code {:?})",
            self.command,
            body.join("\n"),
            self.code
        )
    }

    /// Exit code 0, every message echoed, none lost. A failure shows the relay's non-zero
    /// counters too, to tell where a datagram went missing.
    fn assert_all_echoed(&self, relay: &Relay, expected: usize) {
        let ok = self.code == Some(0)
            && self.totals() == Some((expected, expected))
            && self.lost() == Some(0);
        if !ok {
            // Workers publish their counters once a second.
            thread::sleep(Duration::from_millis(1500));
            let (_, metrics) = http_get(relay.metrics_addr(), "/metrics");
            let counters: Vec<&str> = metrics
                .lines()
                .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
                .collect();
            panic!(
                "expected exit code 0 and {expected} messages sent, echoed and none lost\n{}\n\
                 relay counters:\n{}\n{}",
                self.transcript(),
                counters.join("\n"),
                relay.proc.output()
            );
        }
    }
}

fn uclient(bin: &PathBuf, relay: &Relay, flags: &[&str]) -> Run {
    uclient_at(bin, relay.listen.port(), flags)
}

/// uclient against `port` of 127.0.0.1 (the UDP, TCP or TLS listener).
fn uclient_at(bin: &PathBuf, port: u16, flags: &[&str]) -> Run {
    let port = port.to_string();
    let (n, l) = (MESSAGES.to_string(), LENGTH.to_string());
    let mut cmd = Command::new(bin);
    cmd.args(flags)
        .args(["-u", USER, "-w", PASSWORD, "-p", &port])
        .args(["-n", &n, "-l", &l, "-z", "5"])
        .arg("127.0.0.1");
    let mut p = Proc::spawn(cmd).expect("spawn turnutils_uclient");
    let status = p.wait_timeout(Duration::from_secs(30));
    let output = format!("{}{}", p.stdout(), p.stderr());
    let command = p
        .command_line
        .replace(&bin.display().to_string(), "turnutils_uclient");
    assert!(
        status.is_some(),
        "uclient still running after 30 s\n$ {command}\n{output}"
    );
    Run {
        command,
        code: status.and_then(|s| s.code()),
        output,
    }
}

fn relay_for_uclient(b: Backend, threads: usize) -> Relay {
    RelayOptions {
        threads,
        // uclient runs that fail (see the channel scenario) leave their allocations behind
        // until they expire; give them room.
        relay_ports: 1000,
        metrics: true,
        users: vec![(USER.into(), PASSWORD.into())],
        ..RelayOptions::new(b)
    }
    .start()
}

/// Requests of `method` answered with `result`, over all workers.
fn requests(m: &Metrics, method: &str, result: &str) -> f64 {
    m.sum(
        "uturn_requests_total",
        &[("method", method), ("result", result)],
    )
}

fn relayed(m: &Metrics, direction: &str) -> f64 {
    m.sum("uturn_packets_relayed_total", &[("direction", direction)])
}

/// Send/Data: four clients, no channels; every message echoed through Send and Data
/// indications.
fn send_data(uclient_bin: &PathBuf, b: Backend, peer: SocketAddr) -> String {
    const CLIENTS: usize = 4;
    let relay = relay_for_uclient(b, 2);
    let peer_port = peer.port().to_string();
    let m = CLIENTS.to_string();
    let run = uclient(
        uclient_bin,
        &relay,
        &["-c", "-s", "-m", &m, "-e", "127.0.0.1", "-r", &peer_port],
    );
    run.assert_all_echoed(&relay, CLIENTS * MESSAGES);
    let total = (CLIENTS * MESSAGES) as f64;
    let metrics = relay.wait_metrics("the Send/Data run", |m| {
        relayed(m, "to_client") >= total && relayed(m, "to_peer") >= total
    });
    // uclient makes allocations of its own besides the ones it sends through.
    assert!(metrics.sum("uturn_allocations_total", &[]) >= CLIENTS as f64);
    assert!(requests(&metrics, "create_permission", "success") >= CLIENTS as f64);
    assert_eq!(
        metrics.sum("uturn_requests_total", &[("method", "channel_bind")]),
        0.0,
        "Send/Data mode binds no channel"
    );
    assert!(
        metrics.sum("uturn_bytes_relayed_total", &[("direction", "to_peer")])
            >= total * LENGTH as f64
    );
    run.transcript()
}

/// Channels: ChannelBind, then ChannelData both ways. Runs that draw a channel number outside
/// RFC 8656's range must fail with exactly 400 and nothing else.
fn channels(uclient_bin: &PathBuf, b: Backend, peer: SocketAddr) -> String {
    let relay = relay_for_uclient(b, 2);
    let peer_port = peer.port().to_string();
    let mut log = String::new();
    // `refused`: the runs before this one, all refused with 400.
    for refused in 0..CHANNEL_ATTEMPTS {
        let run = uclient(
            uclient_bin,
            &relay,
            &["-c", "-m", "1", "-e", "127.0.0.1", "-r", &peer_port],
        );
        if run.code == Some(0) {
            run.assert_all_echoed(&relay, MESSAGES);
            let metrics = relay.wait_metrics("the channel run", |m| {
                relayed(m, "to_client") >= MESSAGES as f64
                    && requests(m, "channel_bind", "400") == refused as f64
            });
            assert!(requests(&metrics, "channel_bind", "success") >= 1.0);
            assert!(relayed(&metrics, "to_peer") >= MESSAGES as f64);
            log.push_str(&run.transcript());
            return format!(
                "{refused} earlier run(s) drew a channel number above 0x4FFF and got 400\n{log}"
            );
        }
        assert!(
            run.output.contains("channel bind: error 400"),
            "a channel-mode run failed for another reason than the RFC 5766 channel range\n{}",
            run.transcript()
        );
        if refused == 0 {
            log = format!("{}\n", run.transcript());
        }
    }
    panic!("{CHANNEL_ATTEMPTS} channel-mode runs all failed:\n{log}");
}

/// Client to client: two allocations, each the other's peer.
fn client_to_client(uclient_bin: &PathBuf, b: Backend) -> String {
    let relay = relay_for_uclient(b, 2);
    let run = uclient(uclient_bin, &relay, &["-y", "-c", "-s", "-m", "2"]);
    run.assert_all_echoed(&relay, 2 * MESSAGES);
    let metrics = relay.wait_metrics("the client-to-client run", |m| {
        relayed(m, "to_client") >= (2 * MESSAGES) as f64
    });
    // uclient makes one more allocation of its own before the two it uses.
    assert!(metrics.sum("uturn_allocations_total", &[]) >= 2.0);
    assert!(requests(&metrics, "create_permission", "success") >= 2.0);
    run.transcript()
}

/// The default RTP/RTCP mode: each client allocates an even relay port reserving the next
/// (EVEN-PORT with R), then a second allocation takes it with the RESERVATION-TOKEN.
fn rtp_rtcp_pairs(uclient_bin: &PathBuf, b: Backend, peer: SocketAddr) -> String {
    const CLIENTS: usize = 2;
    let relay = relay_for_uclient(b, 1);
    let peer_port = peer.port().to_string();
    let m = CLIENTS.to_string();
    let run = uclient(
        uclient_bin,
        &relay,
        &["-v", "-s", "-m", &m, "-e", "127.0.0.1", "-r", &peer_port],
    );
    run.assert_all_echoed(&relay, CLIENTS * MESSAGES);
    let ports: Vec<u16> = run.relayed().iter().map(|a| a.port()).collect();
    let pairs = ports
        .iter()
        .filter(|p| *p % 2 == 0 && ports.contains(&(*p + 1)))
        .count();
    // uclient -v prints only some of the addresses it gets; at least one pair shows.
    assert!(
        pairs >= 1,
        "an even port and the next one, reserved for it: {ports:?}\n{}",
        run.transcript()
    );
    assert!(
        run.output
            .lines()
            .any(|l| l.contains("rtv=") && !l.trim_end().ends_with("rtv=0")),
        "uclient got a RESERVATION-TOKEN\n{}",
        run.transcript()
    );
    // The RTP allocations and at least one RTCP allocation by token; none refused.
    let metrics = relay.wait_metrics("the RTP/RTCP run", |m| {
        m.sum("uturn_allocations_total", &[]) > CLIENTS as f64
    });
    assert_eq!(requests(&metrics, "allocate", "508"), 0.0);
    // The verbose protocol trace is long; the log keeps the relayed addresses, the tokens and
    // the summary.
    let t = run.transcript();
    let Some(i) = t.find("Total connect time") else {
        return t;
    };
    let (trace, summary) = t.split_at(i);
    let mut lines = trace.lines();
    let command = lines.next().unwrap_or_default();
    let kept: Vec<&str> = lines
        .filter(|l| l.contains("Received relay addr") || l.contains("rtv="))
        .collect();
    format!(
        "{command}\n[-v trace, relayed addresses and RESERVATION-TOKENs only:]\n{}\n{summary}",
        kept.join("\n")
    )
}

fn uclient_through_uturn(b: Backend) {
    let Some((uclient_bin, peer_bin)) = coturn_tools() else {
        return;
    };
    let (_peer_proc, peer) = start_peer(&peer_bin);
    // The scenarios wait on uclient's own pacing (about 4 s a run), so they run side by side.
    let transcripts = thread::scope(|s| {
        let a = s.spawn(|| send_data(&uclient_bin, b, peer));
        let c = s.spawn(|| client_to_client(&uclient_bin, b));
        let d = s.spawn(|| rtp_rtcp_pairs(&uclient_bin, b, peer));
        let ch = channels(&uclient_bin, b, peer);
        [
            ("Send/Data", a.join().expect("Send/Data")),
            ("channels", ch),
            ("client to client", c.join().expect("client to client")),
            ("RTP/RTCP pairs", d.join().expect("RTP/RTCP pairs")),
        ]
    });
    for (name, t) in transcripts {
        eprintln!("=== {b:?}: {name}\n{t}\n");
    }
}

// ---------------------------------------------------------------------------------------------
// TCP, TLS and RFC 6062.

/// One uclient run over a stream listener, every message echoed.
fn stream_run(bin: &PathBuf, relay: &Relay, port: u16, flags: &[&str], expected: usize) -> String {
    let run = uclient_at(bin, port, flags);
    run.assert_all_echoed(relay, expected);
    run.transcript()
}

fn uclient_over_tcp_and_tls(b: Backend) {
    let Some((uclient_bin, peer_bin)) = coturn_tools() else {
        return;
    };
    let (_peer_proc, peer) = start_peer(&peer_bin);
    let relay = RelayOptions {
        threads: 2,
        relay_ports: 1000,
        metrics: true,
        users: vec![(USER.into(), PASSWORD.into())],
        tcp: true,
        tls: true,
        ..RelayOptions::new(b)
    }
    .start();
    let tcp = relay.listen_tcp.expect("TCP listener").port();
    let tls = relay.listen_tls.expect("TLS listener").port();
    let peer_port = peer.port().to_string();
    let send_data = ["-c", "-s", "-m", "4", "-e", "127.0.0.1", "-r", &peer_port];
    let mut transcripts = Vec::new();
    // Send/Data over TCP, then over TLS (uclient does not check the certificate without -E).
    let flags: Vec<&str> = ["-t"].iter().chain(send_data.iter()).copied().collect();
    transcripts.push((
        "TCP, Send/Data",
        stream_run(&uclient_bin, &relay, tcp, &flags, 4 * MESSAGES),
    ));
    let flags: Vec<&str> = ["-t", "-S"]
        .iter()
        .chain(send_data.iter())
        .copied()
        .collect();
    transcripts.push((
        "TLS, Send/Data",
        stream_run(&uclient_bin, &relay, tls, &flags, 4 * MESSAGES),
    ));
    // RFC 6062: -T makes two TCP allocations over TCP control connections; each Connects to
    // the other's relayed address and binds a data connection (ConnectionAttempt on the other
    // side), and the data goes through the spliced connections.
    transcripts.push((
        "TCP relay (RFC 6062) over TCP",
        stream_run(&uclient_bin, &relay, tcp, &["-T", "-m", "2"], 2 * MESSAGES),
    ));
    transcripts.push((
        "TCP relay (RFC 6062) over TLS",
        stream_run(
            &uclient_bin,
            &relay,
            tls,
            &["-T", "-S", "-m", "2"],
            2 * MESSAGES,
        ),
    ));
    let metrics = relay.wait_metrics("the stream runs", |m| {
        m.sum("uturn_tcp_connections_total", &[("transport", "tcp")]) >= 4.0
            && m.sum("uturn_tcp_connections_total", &[("transport", "tls")]) >= 4.0
            && requests(m, "connection_bind", "success") >= 4.0
    });
    assert!(metrics.sum("uturn_tls_handshakes_total", &[]) >= 4.0);
    assert!(requests(&metrics, "connect", "success") >= 2.0);
    assert!(metrics.sum("uturn_tcp_spliced_bytes_total", &[]) >= (4 * MESSAGES * LENGTH) as f64);
    for (name, t) in transcripts {
        eprintln!("=== {b:?}: {name}\n{t}\n");
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 5780.

fn natdiscovery_against_rfc5780_mode(b: Backend) {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("turnutils_natdiscovery"))
            .find(|p| p.is_file())
    });
    let Some(bin) = found else {
        let required = std::env::var("UTURN_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "turnutils_natdiscovery not installed and UTURN_REQUIRE_INTEROP=1"
        );
        eprintln!("skipped: turnutils_natdiscovery not installed (run scripts/install-deps.sh)");
        return;
    };
    let other_ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    let alt_port = loop {
        let p = free_udp_port(LOCALHOST_V4);
        if UdpSocket::bind(SocketAddr::new(other_ip, p)).is_ok() {
            break p;
        }
    };
    let relay = RelayOptions {
        extra_toml: format!(
            "nat_discovery = {{ alternate_ip = \"{other_ip}\", alternate_port = {alt_port} }}\n"
        ),
        ..RelayOptions::new(b)
    }
    .start();
    let port = relay.listen.port();
    let mut cmd = Command::new(&bin);
    cmd.args(["-m", "-f", "-p", &port.to_string(), "127.0.0.1"]);
    let mut p = Proc::spawn(cmd).expect("spawn turnutils_natdiscovery");
    let status = p.wait_timeout(Duration::from_secs(30));
    let output = format!("{}{}", p.stdout(), p.stderr());
    let transcript = format!(
        "$ turnutils_natdiscovery -m -f -p {port} 127.0.0.1\n{}\n(exit code {:?})",
        output
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
        status.and_then(|s| s.code())
    );
    assert!(
        status.is_some(),
        "natdiscovery still running after 30 s\n{transcript}"
    );
    // Loopback has no NAT: both behaviours come out endpoint-independent, which natdiscovery
    // can only conclude after answers from the other IP and port (CHANGE-REQUEST, OTHER-ADDRESS).
    for needle in [
        "NAT with Endpoint Independent Mapping!".to_string(),
        "NAT with Endpoint Independent Filtering!".to_string(),
        format!("Other addr: : {other_ip}:{alt_port}"),
        format!("Response origin: : {other_ip}:{alt_port}"),
        format!("Response origin: : {other_ip}:{port}"),
    ] {
        assert!(output.contains(&needle), "missing `{needle}`\n{transcript}");
    }
    eprintln!("=== {b:?}: turnutils_natdiscovery\n{transcript}\n");
}
