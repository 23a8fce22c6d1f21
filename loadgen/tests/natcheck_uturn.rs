//! `loadgen natcheck --server` against the real relay in its RFC 5780 mode: uturn listening on
//! 127.0.0.1 and 127.0.0.2, each on two ports. Loopback has no NAT, so natcheck must find the
//! mapped address equal to its own and endpoint-independent filtering, having reached all four
//! of the server's addresses (OTHER-ADDRESS, CHANGE-REQUEST with IP and port).
//!
//! The relay binary is found (or built) by the shared test harness (`common`).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::uturn_bin;

const OTHER_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A UDP port free on both loopback addresses.
fn port_free_on_both() -> u16 {
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = s.local_addr().unwrap().port();
        if UdpSocket::bind(SocketAddr::new(OTHER_LOOPBACK, p)).is_ok() {
            return p;
        }
    }
}

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn natcheck_against_uturn_in_rfc5780_mode() {
    let (port, alt) = loop {
        let (a, b) = (port_free_on_both(), port_free_on_both());
        if a != b {
            break (a, b);
        }
    };
    let base = 11_000 + (std::process::id() % 8) as u16 * 500;
    let _relay = Relay(
        Command::new(uturn_bin())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--alternate-ip",
                "127.0.0.2",
                "--alternate-port",
                &alt.to_string(),
                "--relay-ports",
                &format!("{base}-{}", base + 499),
                "--user",
                "nc:pass",
                "--threads",
                "2",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start uturn"),
    );
    // natcheck itself waits out a slow start: its first test retransmits for a while.
    let until = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args([
                "natcheck",
                "--server",
                &format!("127.0.0.1:{port}"),
                "--rto",
                "100ms",
            ])
            .output()
            .expect("run loadgen natcheck");
        if out.status.success() || Instant::now() > until {
            break out;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("$ loadgen natcheck --server 127.0.0.1:{port}\n{stdout}{stderr}");
    assert!(out.status.success(), "natcheck failed: {stderr}");
    assert!(
        stdout.contains(&format!("other address:  127.0.0.2:{alt}")),
        "{stdout}"
    );
    assert!(stdout.contains("no NAT"), "{stdout}");
    assert!(
        stdout.contains("filtering:      endpoint-independent"),
        "{stdout}"
    );
}
