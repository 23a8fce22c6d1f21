//! The harness the end-to-end tests share: the relay binary (built if needed), a relay process
//! on free loopback ports with `--allow-loopback-peers`, loadgen configurations built from
//! command lines, and one lock so that two loads never compete for the CPU.
//!
//! The relay binary belongs to another package of the workspace, so Cargo does not build it for
//! these tests and `CARGO_BIN_EXE_uturn` does not exist here. It is looked for next to the test's
//! own executable's target directory (`$CARGO_TARGET_DIR` or `<workspace>/target`, same profile)
//! and, when it is missing, built once with `cargo build -p uturn --bin uturn` (`$CARGO` is the
//! cargo running the test).

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use loadgen::cli::{Args, Config};

pub const REALM: &str = "loadgen.test";
pub const USER: &str = "lg";
pub const PASS: &str = "pass-word";

pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The relay binary, built if needed.
pub fn uturn_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // A test runs from <target>/<profile>/deps/<test>-<hash>.
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

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A relay process, killed on drop.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
}

impl Relay {
    pub fn start() -> Relay {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn creds(pass: &str) -> loadgen::turn_only::Credentials {
    loadgen::turn_only::Credentials {
        username: USER.into(),
        password: pass.into(),
        realm: REALM.into(),
    }
}

pub fn config(server: SocketAddr, extra: &[&str]) -> Config {
    let server = server.to_string();
    let user = format!("{USER}:{PASS}");
    let mut argv = vec![
        "loadgen", "--server", &server, "--realm", REALM, "--user", &user, "--quiet",
    ];
    argv.extend_from_slice(extra);
    Config::from_args(Args::try_parse_from(argv).unwrap()).unwrap()
}

pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
