//! The binary's start-up contract: configuration errors are one line naming the key, exit code
//! 2, before any socket opens; a port in use is a clear error, not a panic; with no arguments
//! the embedded default runs a demo user and prints its password once with a loadgen command.

#[macro_use]
mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::*;
use uturn_proto::client::{Failure, RelayFamily};

both_backends!(
    config_errors_exit_2_naming_the_key,
    listen_port_in_use_is_a_clear_error,
    metrics_port_in_use_is_a_clear_error,
    demo_banner_with_listen_override,
);

/// Runs uturn with `args` (and a config file holding `toml`, if given) and returns its exit code,
/// stdout and stderr. It must exit within 5 s.
fn run_to_exit(toml: Option<&str>, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = TempDir::new("config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uturn"));
    if let Some(text) = toml {
        let path = dir.path().join("uturn.toml");
        std::fs::write(&path, text).expect("write config");
        cmd.arg("--config").arg(path);
    }
    cmd.args(args);
    let mut p = Proc::spawn(cmd).expect("spawn uturn");
    let status = p
        .wait_timeout(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("uturn {args:?} still running after 5 s\n{}", p.output()));
    (status.code(), p.stdout(), p.stderr())
}

/// Unknown keys, bad values and impossible combinations, in the file and as flags: each one is
/// exit code 2 and a single line on stderr that names the key, with nothing on stdout. The
/// listening port is held by this test meanwhile: uturn reports the configuration error, not
/// the busy port, so it rejected the configuration before opening any socket.
fn config_errors_exit_2_naming_the_key(b: Backend) {
    let held = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let listen = held.local_addr().expect("addr");
    let base =
        format!("listen = [\"{listen}\"]\nuser = [\"alice:pw\"]\nrelay_ports = \"20000-20999\"\n");
    let with = |extra: &str| format!("{base}{extra}\n");
    let backend = ["--backend", b.flag()];

    // (file, extra flags, the key the message must name)
    let cases: Vec<(Option<String>, Vec<&str>, &str)> = vec![
        // Unknown keys.
        (Some(with("bogus_key = 1")), vec![], "bogus_key"),
        (Some(with("[limits]\nx = 1")), vec![], "limits"),
        (None, vec!["--bogus-flag"], "--bogus-flag"),
        // Bad values.
        (Some(with("threads = \"many\"")), vec![], "threads"),
        (Some(with("threads = 0")), vec![], "threads"),
        (Some(with("backend = \"fast\"")), vec![], "backend"),
        (
            Some(with("deny_peer = [\"10.0.0.1/8\"]")),
            vec![],
            "deny_peer",
        ),
        (Some(with("metrics = \"nowhere\"")), vec![], "metrics"),
        (
            Some(with("default_lifetime = 0")),
            vec![],
            "default_lifetime",
        ),
        (Some(with("log_level = \"[[\"")), vec![], "log_level"),
        (
            Some(base.replace("20000-20999", "30000-20000")),
            vec![],
            "relay_ports",
        ),
        (Some(with("")), vec!["--threads", "abc"], "--threads"),
        (Some(with("")), vec!["--listen", "localhost"], "listen"),
        (Some(with("")), vec!["--user", "nocolon"], "user"),
        (
            Some(with("")),
            vec!["--allow-peer", "1.2.3.4/40"],
            "allow_peer",
        ),
        // Impossible combinations.
        (
            Some(with("threads = 4")),
            vec!["--relay-ports", "20000-20002"],
            "relay_ports",
        ),
        (Some(with("max_lifetime = 60")), vec![], "max_lifetime"),
        (
            Some(base.replace(&listen.to_string(), "0.0.0.0:3478")),
            vec![],
            "relay_ip",
        ),
        (
            Some(with("")),
            vec!["--relay-ip", "127.0.0.1", "--relay-ip", "127.0.0.2"],
            "relay_ip",
        ),
        (
            Some(format!(
                "listen = [\"{listen}\"]\nrelay_ports = \"20000-20999\"\n"
            )),
            vec![],
            "user",
        ),
        (None, vec!["--config", "/nonexistent/uturn.toml"], "config"),
    ];
    for (toml, flags, key) in cases {
        let mut args = flags.clone();
        // The flag would override (and so hide) the file's bad backend.
        if key != "backend" {
            args.extend_from_slice(&backend);
        }
        let (code, stdout, stderr) = run_to_exit(toml.as_deref(), &args);
        let what = format!("{toml:?} {flags:?}");
        assert_eq!(code, Some(2), "{what}: exit code; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: one line on stderr, got {stderr:?}");
        assert!(
            lines[0].contains(key),
            "{what}: {:?} does not name {key}",
            lines[0]
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("in use"),
            "{what}: {stderr}"
        );
        assert!(
            stdout.is_empty(),
            "{what}: nothing on stdout, got {stdout:?}"
        );
    }
    // Still ours: uturn never took it.
    assert_eq!(held.local_addr().expect("addr"), listen);
}

/// A listening port another process holds: exit code 1, a message naming the address and the
/// cause, no panic.
fn listen_port_in_use_is_a_clear_error(b: Backend) {
    let held = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let listen = held.local_addr().expect("addr");
    let listen_s = listen.to_string();
    let (code, _stdout, stderr) = run_to_exit(
        None,
        &[
            "--listen",
            &listen_s,
            "--user",
            "alice:pw",
            "--relay-ports",
            "20000-20999",
            "--backend",
            b.flag(),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("listen {listen}")) && stderr.contains("in use"),
        "the message names the address and the cause: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
}

/// The metrics port in use: the same, for the TCP listener.
fn metrics_port_in_use_is_a_clear_error(b: Backend) {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics = held.local_addr().expect("addr").to_string();
    let listen = SocketAddr::new(LOCALHOST_V4, free_udp_port(LOCALHOST_V4)).to_string();
    let (code, _stdout, stderr) = run_to_exit(
        None,
        &[
            "--listen",
            &listen,
            "--user",
            "alice:pw",
            "--relay-ports",
            "20000-20999",
            "--metrics",
            &metrics,
            "--backend",
            b.flag(),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&metrics) && stderr.contains("metrics") && stderr.contains("in use"),
        "the message names the metrics address and the cause: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Reads the demo password from the banner: "uturn demo: realm R user demo password P".
fn demo_password(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("uturn demo:"))
        .unwrap_or_else(|| panic!("no banner in {stdout}"));
    line.split_whitespace()
        .last()
        .expect("password at the end")
        .to_string()
}

/// Checks the banner of a demo run listening on `server`, that the printed password opens an
/// allocation and another does not, that SIGHUP keeps it, and that SIGTERM ends the run.
fn check_demo(mut p: Proc, server: SocketAddr) {
    assert!(
        p.wait_for_output("loadgen", 1, START_TIMEOUT),
        "no loadgen line\n{}",
        p.output()
    );
    let out = strip_ansi(&p.stdout());
    let pass = demo_password(&out);
    assert!(pass.len() >= 16, "a long random password: {pass:?}");
    let loadgen = out
        .lines()
        .find(|l| l.contains("loadgen --"))
        .expect("a loadgen command line");
    assert!(
        loadgen.contains(&format!("--server {server}"))
            && loadgen.contains(&format!("--user demo:{pass}"))
            && loadgen.contains("--realm uturn.local"),
        "{loadgen}"
    );

    let mut c = Client::new(server, "demo", &pass);
    let a = c
        .allocate(RelayFamily::Ipv4)
        .expect("the printed password works");
    assert_eq!(a.relayed.ip(), server.ip());
    let mut wrong = Client::new(server, "demo", "not-the-password");
    assert_eq!(wrong.allocate(RelayFamily::Ipv4), Err(Failure::Error(401)));

    // A reload keeps the password that was printed, and prints nothing again.
    p.signal(libc::SIGHUP);
    assert!(p.wait_for_output("configuration reloaded", 1, Duration::from_secs(5)));
    let mut again = Client::new(server, "demo", &pass);
    again
        .allocate(RelayFamily::Ipv4)
        .expect("the password survives SIGHUP");

    p.signal(libc::SIGTERM);
    let status = p.wait_timeout(Duration::from_secs(3)).expect("exit");
    assert_eq!(status.code(), Some(0), "{}", p.output());
    let out = strip_ansi(&p.stdout());
    assert_eq!(
        out.matches("uturn demo:").count(),
        1,
        "the banner is printed once\n{out}"
    );
    // The password appears in the banner and the loadgen line only, never in the logs.
    assert_eq!(out.matches(pass.as_str()).count(), 2, "{out}");
    assert!(!strip_ansi(&p.stderr()).contains(pass.as_str()));
}

/// The embedded default with `--listen` on a free port (the default 127.0.0.1:3478 may be taken
/// on a shared machine; the no-argument run is tested below).
fn demo_banner_with_listen_override(b: Backend) {
    let server = SocketAddr::new(LOCALHOST_V4, free_udp_port(LOCALHOST_V4));
    // The default relay range (49152-65535) overlaps the kernel's ephemeral ports, where the
    // free port came from; uturn rightly refuses that, so give it a range of its own.
    let ports = relay_ports(64);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uturn"));
    cmd.args(["--listen", &server.to_string(), "--backend", b.flag()]);
    cmd.args([
        "--relay-ports",
        &format!("{}-{}", ports.start(), ports.end()),
    ]);
    let p = Proc::spawn(cmd).expect("spawn uturn");
    check_demo(p, server);
}

/// `uturn` with no arguments at all: the embedded default on 127.0.0.1:3478 (and [::1]:3478),
/// a demo user, the banner. Needs port 3478 free; where it is taken the test says so and checks
/// nothing else (the override test above covers the banner).
#[test]
fn no_arguments_runs_the_embedded_default() {
    let default: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
    let mut busy = Vec::new();
    if let Err(e) = UdpSocket::bind(default) {
        busy.push(format!("{default}: {e}"));
    }
    if let Err(e) = UdpSocket::bind("[::1]:3478") {
        // Taken, as opposed to IPv6 missing (then uturn leaves [::1] out).
        if e.kind() == std::io::ErrorKind::AddrInUse {
            busy.push(format!("[::1]:3478: {e}"));
        }
    }
    if !busy.is_empty() {
        eprintln!(
            "skipped: the default listening port is taken on this machine ({}); \
             demo_banner_with_listen_override checks the banner instead",
            busy.join(", ")
        );
        return;
    }
    let p = Proc::spawn(Command::new(env!("CARGO_BIN_EXE_uturn"))).expect("spawn uturn");
    check_demo(p, default);
}
