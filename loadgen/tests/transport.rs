//! `--transport tcp` and `--transport tls` against the real relay: every agent's TURN client on
//! its own TCP (or TLS) connection, relaying to its partner over UDP, no loss. The certificate is
//! a throwaway one made here (rcgen) for 127.0.0.1; loadgen trusts it with `--tls-ca`.
//!
//! The relay binary is found (or built) by the shared test harness (`common`).

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::uturn_bin;
use loadgen::cli::{Args, Config};
use loadgen::run;

struct Relay {
    child: Child,
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: SocketAddr,
    ca: PathBuf,
    _dir: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_relay() -> Relay {
    let dir = std::env::temp_dir().join(format!("loadgen-transport-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let udp: SocketAddr = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tcp: SocketAddr = ([127, 0, 0, 1], tcp_port()).into();
    let tls: SocketAddr = ([127, 0, 0, 1], tcp_port()).into();
    let base = 12_000 + (std::process::id() % 8) as u16 * 500;
    let config = dir.join("uturn.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"{udp}\"]\nlisten_tcp = [\"{tcp}\"]\nlisten_tls = [\"{tls}\"]\n\
             tls_cert = {cert:?}\ntls_key = {key:?}\nrelay_ports = \"{base}-{}\"\n\
             realm = \"lg.test\"\nuser = [\"lg:pw\"]\nthreads = 2\nallow_loopback_peers = true\n\
             log_level = \"warn\"\n",
            base + 499
        ),
    )
    .unwrap();
    let child = Command::new(uturn_bin())
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start uturn");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(tls).is_err() {
        assert!(Instant::now() < until, "uturn did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Relay {
        child,
        udp,
        tcp,
        tls,
        ca: cert,
        _dir: dir,
    }
}

fn config(args: &[&str]) -> Result<Config, loadgen::cli::ConfigError> {
    let mut argv = vec![
        "loadgen", "--realm", "lg.test", "--user", "lg:pw", "--quiet",
    ];
    argv.extend_from_slice(args);
    Config::from_args(Args::try_parse_from(argv).unwrap())
}

#[test]
fn agents_over_tcp_and_tls_relay_without_loss() {
    let relay = start_relay();
    let ca = relay.ca.display().to_string();
    for (transport, server) in [("tcp", relay.tcp), ("tls", relay.tls)] {
        let server = server.to_string();
        let c = config(&[
            "--server",
            &server,
            "--transport",
            transport,
            "--tls-ca",
            &ca,
            "--agents",
            "40",
            "--duration",
            "2s",
            "--ramp",
            "500ms",
            "--threads",
            "2",
        ])
        .unwrap();
        let out = run::run(&c).unwrap();
        let r = &out.report;
        eprintln!("{}", r.summary());
        assert!(
            r.summary().contains(transport),
            "the report names the transport"
        );
        assert_eq!(
            r.agents.connected, 40,
            "{transport}: {:?}",
            r.agents.failures
        );
        let t = &r.traffic;
        assert!(t.sent >= 40 * 50 * 2, "{transport}: sent {}", t.sent);
        assert_eq!(t.lost, 0, "{transport}: no loss on a stream leg");
        assert_eq!(t.foreign, 0);
    }
    // UDP on the same relay, for contrast.
    let udp = relay.udp.to_string();
    let c = config(&[
        "--server",
        &udp,
        "--agents",
        "4",
        "--duration",
        "1s",
        "--ramp",
        "0s",
    ])
    .unwrap();
    assert_eq!(run::run(&c).unwrap().report.agents.connected, 4);
}

#[test]
fn transport_flags_are_checked() {
    let e = config(&[
        "--server",
        "127.0.0.1:5349",
        "--transport",
        "tls",
        "--agents",
        "2",
    ])
    .unwrap_err();
    assert_eq!(e.flag, "tls-ca", "{e}");
    let e = config(&[
        "--server",
        "127.0.0.1:3478",
        "--transport",
        "tcp",
        "--nat",
        "symmetric",
        "--agents",
        "2",
    ])
    .unwrap_err();
    assert_eq!(e.flag, "nat", "{e}");
    let e = config(&[
        "--server",
        "127.0.0.1:5349",
        "--transport",
        "tls",
        "--tls-ca",
        "/nonexistent.pem",
        "--agents",
        "2",
    ])
    .unwrap_err();
    assert_eq!(e.flag, "tls-ca", "{e}");
    assert!(e.to_string().contains("nonexistent"), "{e}");
}
