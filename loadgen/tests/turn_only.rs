//! loadgen against the real relay: `target/<profile>/uturn` started on free loopback ports with
//! `--allow-loopback-peers`, driven through loadgen's library entry point (and, for the exit
//! codes, its binary).
//!
//! The relay binary belongs to another package of the workspace, so Cargo does not build it for
//! this test and `CARGO_BIN_EXE_uturn` does not exist here. The test looks for it next to its
//! own executable's target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`, same
//! profile) and, when it is missing, builds it once with `cargo build -p uturn --bin uturn`
//! (`$CARGO` is the cargo running the test). Tests share one lock so that two loads never
//! compete for the CPU.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use loadgen::cli::{Args, Config};
use loadgen::preflight::PreflightError;
use loadgen::run::{self, RunError};

const REALM: &str = "loadgen.test";
const USER: &str = "lg";
const PASS: &str = "pass-word";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The relay binary, built if needed.
fn uturn_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // This test runs from <target>/<profile>/deps/turn_only-<hash>.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
        let bin = profile_dir.join("uturn");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "uturn", "--bin", "uturn"])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build -p uturn");
            assert!(status.success(), "cargo build -p uturn failed");
        }
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A relay process, killed on drop.
struct Relay {
    child: Child,
    addr: SocketAddr,
}

impl Relay {
    fn start() -> Relay {
        let port = free_udp_port();
        // Relay ports: a block below the ephemeral range, away from the listening port and
        // from the emulated NATs' 20000-32767, different per test process.
        let base = 10_000 + (std::process::id() % 8) as u16 * 1000;
        let child = Command::new(uturn_bin())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--relay-ip",
                "127.0.0.1",
                "--relay-ports",
                &format!("{base}-{}", base + 999),
                "--realm",
                REALM,
                "--user",
                &format!("{USER}:{PASS}"),
                "--allow-loopback-peers",
                "--threads",
                "1",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start uturn");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let relay = Relay { child, addr };
        // Ready when a preflight passes (bounded: 10 s).
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match loadgen::preflight::run(addr, &creds(PASS)) {
                Ok(_) => break,
                Err(e) if Instant::now() > until => panic!("relay not ready: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        relay
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn creds(pass: &str) -> loadgen::turn_only::Credentials {
    loadgen::turn_only::Credentials {
        username: USER.into(),
        password: pass.into(),
        realm: REALM.into(),
    }
}

fn config(server: SocketAddr, extra: &[&str]) -> Config {
    let server = server.to_string();
    let user = format!("{USER}:{PASS}");
    let mut argv = vec![
        "loadgen", "--server", &server, "--realm", REALM, "--user", &user, "--quiet",
    ];
    argv.extend_from_slice(extra);
    Config::from_args(Args::try_parse_from(argv).unwrap()).unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn two_hundred_clients_relay_to_each_other_without_loss() {
    let _g = serial();
    let relay = Relay::start();
    let json = temp("200.json");
    let svg = temp("200.svg");
    let pid = relay.pid().to_string();
    let mut c = config(
        relay.addr,
        &[
            "--agents",
            "200",
            "--duration",
            "3s",
            "--ramp",
            "500ms",
            "--rate",
            "50",
            "--threads",
            "2",
            "--server-pid",
            &pid,
        ],
    );
    c.json = Some(json.clone());
    c.plot = Some(svg.clone());
    let out = run::run(&c).unwrap();
    let r = &out.report;
    eprintln!("{}", r.summary());
    assert_eq!(r.agents.requested, 200);
    assert_eq!(r.agents.connected, 200, "{:?}", r.agents.failures);
    assert_eq!(r.agents.failed, 0);
    assert_eq!(r.candidates.selected.relay, 200);
    let t = &r.traffic;
    // 200 agents x 50 pps x 3 s in the window alone.
    assert!(t.sent >= 25_000, "sent {}", t.sent);
    assert!(t.loss_ratio < 0.001, "loss {} of {}", t.lost, t.sent);
    assert_eq!(t.foreign, 0);
    assert_eq!(t.duplicated, 0);
    assert!(r.latency_us.count >= t.unique && r.latency_us.p50 > 0);
    assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
    assert_eq!(r.ice.setup_ms.count, 200);
    assert_eq!(r.allocation_ms.count, 200);
    assert!(r.throughput.pps > 5000.0, "{}", r.throughput.pps);
    let server = r.server.as_ref().expect("--server-pid measured");
    assert!(server.cpu_seconds > 0.0 && server.packets_per_cpu_second > 0.0);
    assert!(r.generator.cpu_seconds > 0.0);
    assert!(r.timeline.len() >= 3);
    assert!(r.timeline.iter().any(|s| s.pps > 5000));

    // The JSON on disk has the documented keys with the same figures.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "/agents/requested",
        "/agents/connected",
        "/agents/failed",
        "/ice/setup_ms/p50",
        "/ice/setup_ms/p99",
        "/ice/setup_ms/max",
        "/candidates/selected/host",
        "/candidates/selected/srflx",
        "/candidates/selected/prflx",
        "/candidates/selected/relay",
        "/traffic/sent",
        "/traffic/received",
        "/traffic/lost",
        "/latency_us/p50",
        "/latency_us/p99",
        "/latency_us/p999",
        "/throughput/pps",
        "/ice/restarts",
        "/server/cpu_seconds",
        "/server/packets_per_cpu_second",
    ] {
        assert!(v.pointer(key).is_some(), "JSON lacks {key}");
    }
    assert_eq!(v.pointer("/agents/connected").unwrap(), 200);
    assert_eq!(v.pointer("/traffic/sent").unwrap(), t.sent);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"));
}

#[test]
fn clients_behind_symmetric_nats_relay_through_real_nat_sockets() {
    let _g = serial();
    let relay = Relay::start();
    let c = config(
        relay.addr,
        &[
            "--agents",
            "20",
            "--duration",
            "2s",
            "--ramp",
            "0s",
            "--nat",
            "apdm-apdf",
            "--threads",
            "1",
        ],
    );
    let out = run::run(&c).unwrap();
    let r = &out.report;
    assert_eq!(r.agents.connected, 20, "{:?}", r.agents.failures);
    assert!(
        r.traffic.loss_ratio < 0.01,
        "{} of {}",
        r.traffic.lost,
        r.traffic.sent
    );
    // One public socket per client (its only destination is the server), all on 127.x.y.z
    // addresses of their own, and nothing dropped by the emulated NATs.
    assert_eq!(out.fabric.nat_sockets_opened, 20);
    assert_eq!(
        out.fabric.filtered + out.fabric.no_mapping + out.fabric.unreachable,
        0
    );
}

#[test]
fn chaos_drops_nat_mappings_and_the_loss_shows() {
    let _g = serial();
    let relay = Relay::start();
    let c = config(
        relay.addr,
        &[
            "--agents",
            "10",
            "--duration",
            "2s",
            "--ramp",
            "0s",
            "--nat",
            "eim-eif",
            "--chaos",
            "--threads",
            "1",
        ],
    );
    let out = run::run(&c).unwrap();
    let r = &out.report;
    assert_eq!(r.agents.connected, 10);
    // Halfway through, every client's NAT forgets its mapping: its next datagram leaves from a
    // new public port, a 5-tuple the relay has no allocation for, so the rest is lost.
    assert_eq!(out.fabric.nat_sockets_closed, 10);
    assert_eq!(out.fabric.nat_sockets_opened, 20);
    assert!(r.traffic.loss_ratio > 0.2, "{}", r.traffic.loss_ratio);
}

#[test]
fn bad_credentials_fail_fast_with_a_clear_message() {
    let _g = serial();
    let relay = Relay::start();
    let mut c = config(relay.addr, &["--agents", "2", "--duration", "1s"]);
    c.credentials.password = "wrong".into();
    let t = Instant::now();
    let e = run::run(&c).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        matches!(
            e,
            RunError::Preflight(PreflightError::BadCredentials { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("bad credentials"), "{e}");

    // The binary: exit status 1 and the message on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--server",
            &relay.addr.to_string(),
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:wrong"),
            "--agents",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad credentials"), "{stderr}");
}

#[test]
fn an_unreachable_server_fails_within_seconds() {
    let _g = serial();
    let port = free_udp_port();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--realm",
            REALM,
            "--user",
            "a:b",
            "--agents",
            "2",
        ])
        .output()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        stderr.contains("refused") || stderr.contains("no answer"),
        "{stderr}"
    );
}

#[test]
fn the_binary_runs_a_small_load_and_writes_its_outputs() {
    let _g = serial();
    let relay = Relay::start();
    let json = temp("bin.json");
    let svg = temp("bin.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--server",
            &relay.addr.to_string(),
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASS}"),
            "--agents",
            "9",
            "--duration",
            "1s",
            "--ramp",
            "200ms",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("rounded up to 10"), "{stderr}");
    assert!(
        stdout.contains("requested 10  connected 10  failed 0"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v.pointer("/agents/requested").unwrap(), 10);
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}
