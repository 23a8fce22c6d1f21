//! Shared harness for the process-level tests: starts the real `uturn` binary on free loopback
//! ports with a temporary config file, waits until it answers a STUN Binding, and kills it when
//! dropped; drives the project's sans-IO [`TurnClient`] over a real `UdpSocket`; scrapes the
//! metrics endpoint.
//!
//! Every wait here has a deadline, so a test that goes wrong fails in seconds instead of hanging,
//! and every child process is killed on drop, and also by the kernel (`PR_SET_PDEATHSIG`) if the
//! test process itself dies first.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod stream;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::ops::RangeInclusive;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use uturn_proto::channel_data::ChannelNumber;
use uturn_proto::client::{
    Allocation, ClientConfig, Event, Failure, Input, RelayFamily, TurnClient,
};
use uturn_proto::stun::attr::{ErrorCode, Nonce, Realm, RequestedTransport, XorMappedAddress};
use uturn_proto::stun::{Class, Encoder, Message, MessageType, Method, TransactionId};

/// The longest any single exchange (a request and its answer, a relayed datagram) may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long uturn may take to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to listen to be sure that something does *not* arrive.
pub const QUIET: Duration = Duration::from_millis(300);

pub const LOCALHOST_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const LOCALHOST_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------------
// Backends.

/// The I/O backend a relay runs on (`--backend`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Portable,
}

impl Backend {
    pub fn flag(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Portable => "portable",
        }
    }

    /// Whether this backend can run here. Only io_uring can be missing (an old kernel, a seccomp
    /// filter); the reason is printed so that a skipped run says why.
    pub fn available(self) -> bool {
        static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
        match self {
            Backend::Portable => true,
            Backend::Uring => match PROBE.get_or_init(uturn::driver::probe_uring) {
                Ok(()) => true,
                Err(reason) => {
                    eprintln!("skipped: io_uring is unavailable on this host: {reason}");
                    false
                }
            },
        }
    }
}

/// Turns `fn name(backend: Backend)` into two tests, `name::uring` and `name::portable`. The uring
/// one returns early, printing why, only where the io_uring probe fails. (`#[macro_use] mod
/// common;` brings it in.)
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn uring() {
                    if $crate::common::Backend::Uring.available() {
                        super::$name($crate::common::Backend::Uring);
                    }
                }

                #[test]
                fn portable() {
                    super::$name($crate::common::Backend::Portable);
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Ports and files.

/// A UDP port on `ip` that nothing holds now (the kernel's pick; released before returning).
pub fn free_udp_port(ip: IpAddr) -> u16 {
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port")
}

/// A TCP port on `ip` that nothing holds now.
pub fn free_tcp_port_on(ip: IpAddr) -> u16 {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

/// A TCP port on 127.0.0.1 that nothing holds now.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

/// Relay port ranges come from 20000-32767: below Linux's ephemeral range (32768-60999), so the
/// ports the tests' own sockets get from the kernel never land in a relay range. Ranges are
/// handed out one after another, so tests running at the same time in this process never
/// share a port; the start is random so that two test processes running at once (nextest, or
/// two checkouts) rarely meet, and where they do, uturn moves on to another port (it retries
/// ports that are in use).
const RELAY_WINDOW: RangeInclusive<u32> = 20_000..=32_767;

pub fn relay_ports(n: u16) -> RangeInclusive<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = RELAY_WINDOW.end() - RELAY_WINDOW.start() + 1;
    let n = u32::from(n).clamp(1, span);
    let _ = NEXT.compare_exchange(
        0,
        rand::random::<u32>() % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let mut offset = NEXT.fetch_add(n, Ordering::Relaxed) - 1;
    offset %= span;
    if offset + n > span {
        // Wrap instead of running off the end of the window.
        offset = 0;
        NEXT.store(n + 1, Ordering::Relaxed);
    }
    let lo = RELAY_WINDOW.start() + offset;
    (lo as u16)..=((lo + n - 1) as u16)
}

/// A directory of its own under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "uturn-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A child process whose stdout and stderr are collected as they come (so a chatty child never
/// blocks on a full pipe), killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
    pub command_line: String,
}

impl Proc {
    /// Spawns `cmd` with piped output. The kernel kills the child if the thread that spawned it
    /// dies (a panicking test unwinds through drop anyway; this covers an aborted test process).
    pub fn spawn(mut cmd: Command) -> std::io::Result<Proc> {
        let command_line = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, Arc::clone(&stdout)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, Arc::clone(&stderr)));
        }
        Ok(Proc {
            child,
            stdout,
            stderr,
            readers,
            status: None,
            command_line,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Both streams, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- stdout of `{}`:\n{}\n--- stderr:\n{}",
            self.command_line,
            strip_ansi(&self.stdout()),
            strip_ansi(&self.stderr())
        )
    }

    /// Sends `sig` (libc::SIGTERM, ...) to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// The exit status if the child has exited by now.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits at most `timeout` for the child to exit; then its output is complete.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                // The pipes close with the process; the readers finish right after.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `needle` occurs `count` times in stdout or stderr, at most `timeout`.
    pub fn wait_for_output(&mut self, needle: &str, count: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            let seen =
                self.stdout().matches(needle).count() + self.stderr().matches(needle).count();
            if seen >= count {
                return true;
            }
            if Instant::now() >= until || self.try_status().is_some() {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut lines = BufReader::new(stream);
        let mut line = String::new();
        while let Ok(n) = lines.read_line(&mut line) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = into.lock() {
                s.push_str(&line);
            }
            line.clear();
        }
    })
}

/// Removes the colour escapes tracing writes, so that output can be read and matched.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The relay.

/// How to start a relay. Everything that SIGHUP reloads (users, secrets, peer policy) goes into
/// the config file, so that a test can rewrite it; flags would win over the file on reload too.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub backend: Backend,
    pub threads: usize,
    pub realm: String,
    pub users: Vec<(String, String)>,
    pub secrets: Vec<String>,
    pub allow_loopback: bool,
    /// Listen on ::1 instead of 127.0.0.1.
    pub ipv6: bool,
    pub metrics: bool,
    /// How many relay ports in all (split between the workers).
    pub relay_ports: u16,
    /// Extra TOML lines for the config file.
    pub extra_toml: String,
    pub extra_args: Vec<String>,
    /// Run uturn with this open-file limit (soft and hard), to exhaust descriptors on purpose.
    pub nofile: Option<u64>,
    /// Listen for TURN over TCP too (a free port of its own).
    pub tcp: bool,
    /// Listen for TURN over TLS too, with the throwaway certificate of [`stream::pki`].
    pub tls: bool,
}

impl RelayOptions {
    pub fn new(backend: Backend) -> Self {
        RelayOptions {
            backend,
            threads: 2,
            realm: "uturn.test".into(),
            users: vec![("alice".into(), "alice-password".into())],
            secrets: Vec::new(),
            allow_loopback: true,
            ipv6: false,
            metrics: false,
            relay_ports: 64,
            extra_toml: String::new(),
            extra_args: Vec::new(),
            nofile: None,
            tcp: false,
            tls: false,
        }
    }

    pub fn start(self) -> Relay {
        Relay::start(self)
    }
}

/// A running `uturn`, killed on drop.
#[derive(Debug)]
pub struct Relay {
    pub proc: Proc,
    pub opts: RelayOptions,
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub relay_ports: RangeInclusive<u16>,
    pub config_path: PathBuf,
    /// The TCP and TLS listening addresses, when asked for.
    pub listen_tcp: Option<SocketAddr>,
    pub listen_tls: Option<SocketAddr>,
    _dir: Option<TempDir>,
}

/// The stream listeners of a relay's config file.
#[derive(Clone, Debug, Default)]
struct StreamListen {
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    cert_dir: Option<PathBuf>,
}

impl Relay {
    pub fn start(opts: RelayOptions) -> Relay {
        let ip = if opts.ipv6 {
            LOCALHOST_V6
        } else {
            LOCALHOST_V4
        };
        let dir = TempDir::new("relay");
        let config_path = dir.path().join("uturn.toml");
        let relay_ports = relay_ports(opts.relay_ports);
        // A port picked free can be taken by someone else before uturn binds it; try again then.
        for attempt in 0..3 {
            let listen = SocketAddr::new(ip, free_udp_port(ip));
            let metrics = opts
                .metrics
                .then(|| SocketAddr::new(LOCALHOST_V4, free_tcp_port()));
            let streams = StreamListen {
                tcp: opts.tcp.then(|| SocketAddr::new(ip, free_tcp_port_on(ip))),
                tls: opts.tls.then(|| SocketAddr::new(ip, free_tcp_port_on(ip))),
                cert_dir: Some(dir.path().to_path_buf()),
            };
            if opts.tls {
                let pki = stream::pki();
                std::fs::write(dir.path().join("cert.pem"), &pki.cert_pem).expect("cert");
                std::fs::write(dir.path().join("key.pem"), &pki.key_pem).expect("key");
            }
            std::fs::write(
                &config_path,
                config_text(&opts, listen, metrics, &relay_ports, &streams),
            )
            .expect("write config");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_uturn"));
            cmd.arg("--config")
                .arg(&config_path)
                .arg("--backend")
                .arg(opts.backend.flag())
                .args(&opts.extra_args)
                .env("RUST_BACKTRACE", "1");
            if let Some(n) = opts.nofile {
                use std::os::unix::process::CommandExt;
                // SAFETY: setrlimit is async-signal-safe and touches only the child.
                unsafe {
                    cmd.pre_exec(move || {
                        let lim = libc::rlimit {
                            rlim_cur: n,
                            rlim_max: n,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
            }
            let proc = Proc::spawn(cmd).expect("spawn uturn");
            let mut relay = Relay {
                proc,
                opts: opts.clone(),
                listen,
                metrics,
                relay_ports: relay_ports.clone(),
                config_path: config_path.clone(),
                listen_tcp: streams.tcp,
                listen_tls: streams.tls,
                _dir: None,
            };
            match relay.wait_ready() {
                Ok(()) => {
                    relay._dir = Some(dir);
                    return relay;
                }
                Err(why) => {
                    let output = relay.proc.output();
                    let raced = output.contains("in use") && attempt < 2;
                    assert!(raced, "uturn did not start: {why}\n{output}");
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Sends STUN Binding requests until one is answered.
    fn wait_ready(&mut self) -> Result<(), String> {
        let until = Instant::now() + START_TIMEOUT;
        let sock = bind_near(self.listen.ip());
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut buf = [0u8; 1500];
        // Any of the requests sent may be the one answered: on a loaded machine an answer can
        // take longer than the 50 ms between tries.
        let mut sent = Vec::new();
        loop {
            if let Some(s) = self.proc.try_status() {
                return Err(format!("exited with {s}"));
            }
            if Instant::now() >= until {
                return Err(format!("no Binding answer within {START_TIMEOUT:?}"));
            }
            let tid = TransactionId(rand::random());
            sent.push(tid);
            let n = binding_request(tid, &mut buf);
            let _ = sock.send_to(&buf[..n], self.listen);
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let ok = Message::parse(&buf[..n]).is_ok_and(|m| {
                    sent.contains(&m.transaction_id())
                        && m.class() == Class::Success
                        && m.get::<XorMappedAddress>().ok().flatten().is_some()
                });
                if ok && from == self.listen {
                    return Ok(());
                }
            }
        }
    }

    pub fn realm(&self) -> &str {
        &self.opts.realm
    }

    /// A client for the first configured user.
    pub fn client(&self) -> Client {
        let (u, p) = self.opts.users.first().expect("a static user");
        Client::new(self.listen, u, p)
    }

    /// Rewrites the config file with new options (for SIGHUP); the ports stay the same.
    pub fn rewrite_config(&mut self, opts: RelayOptions) {
        let streams = StreamListen {
            tcp: self.listen_tcp,
            tls: self.listen_tls,
            cert_dir: self.config_path.parent().map(Path::to_path_buf),
        };
        std::fs::write(
            &self.config_path,
            config_text(
                &opts,
                self.listen,
                self.metrics,
                &self.relay_ports,
                &streams,
            ),
        )
        .expect("rewrite config");
        self.opts = opts;
    }

    /// Sends SIGHUP and waits until every worker applied the new configuration.
    pub fn reload(&mut self) {
        let before = self.reloads_logged();
        self.proc.signal(libc::SIGHUP);
        let want = before + self.opts.threads;
        assert!(
            self.proc.wait_for_output(
                "credentials and peer policy reloaded",
                want,
                Duration::from_secs(5)
            ),
            "not every worker reloaded within 5 s\n{}",
            self.proc.output()
        );
    }

    fn reloads_logged(&self) -> usize {
        let needle = "credentials and peer policy reloaded";
        self.proc.stdout().matches(needle).count() + self.proc.stderr().matches(needle).count()
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.expect("started with metrics")
    }

    /// Scrapes /metrics until `check` holds (workers publish once a second), at most 5 s.
    pub fn wait_metrics(&self, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let (code, body) = http_get(self.metrics_addr(), "/metrics");
            assert_eq!(code, 200, "/metrics: {body}");
            let m = Metrics::parse(&body);
            if check(&m) {
                return m;
            }
            assert!(
                Instant::now() < until,
                "metrics never showed {what} within 5 s:\n{body}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn config_text(
    o: &RelayOptions,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    ports: &RangeInclusive<u16>,
    streams: &StreamListen,
) -> String {
    let list = |v: &mut dyn Iterator<Item = String>| {
        v.map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
    };
    let mut t = String::new();
    let _ = writeln!(t, "listen = [\"{listen}\"]");
    let _ = writeln!(t, "relay_ports = \"{}-{}\"", ports.start(), ports.end());
    let _ = writeln!(t, "realm = {:?}", o.realm);
    let _ = writeln!(t, "threads = {}", o.threads);
    let _ = writeln!(t, "log_level = \"info\"");
    let _ = writeln!(t, "allow_loopback_peers = {}", o.allow_loopback);
    if !o.users.is_empty() {
        let users = list(&mut o.users.iter().map(|(u, p)| format!("{u}:{p}")));
        let _ = writeln!(t, "user = [{users}]");
    }
    if !o.secrets.is_empty() {
        let _ = writeln!(
            t,
            "auth_secret = [{}]",
            list(&mut o.secrets.iter().cloned())
        );
    }
    if let Some(m) = metrics {
        let _ = writeln!(t, "metrics = \"{m}\"");
    }
    if let Some(a) = streams.tcp {
        let _ = writeln!(t, "listen_tcp = [\"{a}\"]");
    }
    if let (Some(a), Some(dir)) = (streams.tls, &streams.cert_dir) {
        let _ = writeln!(t, "listen_tls = [\"{a}\"]");
        let _ = writeln!(t, "tls_cert = {:?}", dir.join("cert.pem"));
        let _ = writeln!(t, "tls_key = {:?}", dir.join("key.pem"));
    }
    t.push_str(&o.extra_toml);
    t
}

/// A STUN Binding request, with FINGERPRINT, into `buf`.
pub fn binding_request(tid: TransactionId, buf: &mut [u8]) -> usize {
    let mut enc =
        Encoder::new(buf, MessageType::new(Method::BINDING, Class::Request), tid).expect("buffer");
    enc.fingerprint().expect("fingerprint");
    enc.finish()
}

/// An Allocate request without credentials, the first message of every client.
pub fn bare_allocate(tid: TransactionId, buf: &mut [u8]) -> usize {
    let mut enc =
        Encoder::new(buf, MessageType::new(Method::ALLOCATE, Class::Request), tid).expect("buffer");
    enc.add(&RequestedTransport::UDP).expect("attr");
    enc.fingerprint().expect("fingerprint");
    enc.finish()
}

/// What the server said to a request without credentials: the error code, realm and nonce.
pub fn challenge(listen: SocketAddr) -> (u16, String, String) {
    let sock = bind_near(listen.ip());
    sock.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut buf = [0u8; 1500];
    let tid = TransactionId(rand::random());
    let n = bare_allocate(tid, &mut buf);
    sock.send_to(&buf[..n], listen).expect("send");
    let (n, _) = sock.recv_from(&mut buf).expect("an answer to Allocate");
    let m = Message::parse(&buf[..n]).expect("a STUN answer");
    assert_eq!(m.transaction_id(), tid);
    assert_eq!(m.class(), Class::Error);
    let code = m
        .get::<ErrorCode<'_>>()
        .ok()
        .flatten()
        .map_or(0, |e| e.code);
    let realm = m.get::<Realm<'_>>().ok().flatten().map(|r| r.0.to_string());
    let nonce = m.get::<Nonce<'_>>().ok().flatten().map(|n| n.0.to_string());
    (code, realm.unwrap_or_default(), nonce.unwrap_or_default())
}

/// A socket on the loopback address of `ip`'s family, port chosen by the kernel.
pub fn bind_near(ip: IpAddr) -> UdpSocket {
    let local = if ip.is_ipv6() {
        LOCALHOST_V6
    } else {
        LOCALHOST_V4
    };
    UdpSocket::bind(SocketAddr::new(local, 0)).expect("bind a client socket")
}

// ---------------------------------------------------------------------------------------------
// The project's TURN client over a real socket.

/// A datagram of application data the client received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub peer: SocketAddr,
    pub payload: Vec<u8>,
    /// It came as ChannelData (otherwise as a Data indication).
    pub channel: bool,
}

/// [`TurnClient`] on a blocking `UdpSocket`: each call runs the sans-IO loop until the answer it
/// waits for arrives, at most [`IO_TIMEOUT`].
#[derive(Debug)]
pub struct Client {
    pub sock: UdpSocket,
    pub turn: TurnClient,
    events: VecDeque<Event>,
    data: VecDeque<Received>,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(server: SocketAddr, user: &str, password: &str) -> Client {
        Client::with_config(ClientConfig::new(server, user, password))
    }

    pub fn with_config(config: ClientConfig) -> Client {
        let sock = bind_near(config.server.ip());
        let turn = TurnClient::new(config, rand::random()).expect("client config");
        Client {
            sock,
            turn,
            events: VecDeque::new(),
            data: VecDeque::new(),
            buf: vec![0; 4096],
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    /// Sends what the client has to send, then waits for one datagram (at most until `until`
    /// or the client's next timer) and feeds it in.
    fn step(&mut self, until: Instant) {
        let mut out = [0u8; 1500];
        while let Some(t) = self.turn.poll_transmit(&mut out) {
            self.sock.send_to(&out[..t.len], t.to).expect("send");
        }
        let now = Instant::now();
        let wake = self.turn.poll_timeout().map_or(until, |t| t.min(until));
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        self.sock.set_read_timeout(Some(wait)).expect("timeout");
        if let Ok((n, from)) = self.sock.recv_from(&mut self.buf) {
            let now = Instant::now();
            let channel = matches!(self.buf.first(), Some(0x40..=0x4F));
            if let Input::Data { peer, payload } = self.turn.handle_input(now, from, &self.buf[..n])
            {
                self.data.push_back(Received {
                    peer,
                    payload: payload.to_vec(),
                    channel,
                });
            }
        }
        self.turn.handle_timeout(Instant::now());
        while let Some(e) = self.turn.poll_event() {
            self.events.push_back(e);
        }
    }

    /// Runs the loop until an event about `method` arrives; other events are kept for later.
    fn wait_for(&mut self, method: Method) -> Event {
        let until = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(i) = self.events.iter().position(|e| event_method(e) == method) {
                return self.events.remove(i).expect("index found");
            }
            assert!(
                Instant::now() < until,
                "no answer to {} within {IO_TIMEOUT:?}",
                method.name()
            );
            self.step(until);
        }
    }

    /// Allocate, answering the server's 401 challenge.
    pub fn allocate(&mut self, family: RelayFamily) -> Result<Allocation, Failure> {
        self.turn
            .allocate(Instant::now(), family)
            .expect("allocate");
        match self.wait_for(Method::ALLOCATE) {
            Event::Allocated(a) => Ok(a),
            Event::Failed { failure, .. } => Err(failure),
            e => panic!("unexpected {e:?}"),
        }
    }

    pub fn create_permission(&mut self, peers: &[IpAddr]) -> Result<(), Failure> {
        self.turn
            .create_permission(Instant::now(), peers)
            .expect("create_permission");
        match self.wait_for(Method::CREATE_PERMISSION) {
            Event::PermissionCreated { .. } => Ok(()),
            Event::Failed { failure, .. } => Err(failure),
            e => panic!("unexpected {e:?}"),
        }
    }

    pub fn channel_bind(&mut self, peer: SocketAddr) -> Result<ChannelNumber, Failure> {
        self.turn
            .channel_bind(Instant::now(), peer)
            .expect("channel_bind");
        match self.wait_for(Method::CHANNEL_BIND) {
            Event::ChannelBound { channel, .. } => Ok(channel),
            Event::Failed { failure, .. } => Err(failure),
            e => panic!("unexpected {e:?}"),
        }
    }

    /// Refresh; `Some(ZERO)` deletes the allocation.
    pub fn refresh(&mut self, lifetime: Option<Duration>) -> Result<Event, Failure> {
        self.turn
            .refresh(Instant::now(), lifetime)
            .expect("refresh");
        match self.wait_for(Method::REFRESH) {
            Event::Failed { failure, .. } => Err(failure),
            e => Ok(e),
        }
    }

    /// A Send indication to `peer`.
    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) {
        let mut out = vec![0u8; payload.len() + 100];
        let t = self
            .turn
            .send_indication(peer, payload, &mut out)
            .expect("encode Send");
        self.sock.send_to(&out[..t.len], t.to).expect("send");
    }

    /// A ChannelData message to `peer` (its channel must be bound).
    pub fn channel_data(&mut self, peer: SocketAddr, payload: &[u8]) {
        let mut out = vec![0u8; payload.len() + 8];
        let t = self
            .turn
            .channel_data(peer, payload, &mut out)
            .expect("encode ChannelData");
        self.sock.send_to(&out[..t.len], t.to).expect("send");
    }

    /// The next application datagram, if one arrives within `timeout`.
    pub fn recv_data(&mut self, timeout: Duration) -> Option<Received> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(d) = self.data.pop_front() {
                return Some(d);
            }
            if Instant::now() >= until {
                return None;
            }
            self.step(until);
        }
    }
}

pub(crate) fn event_method(e: &Event) -> Method {
    match e {
        Event::BindingSuccess { .. } => Method::BINDING,
        Event::Allocated(_) => Method::ALLOCATE,
        Event::Refreshed { .. } | Event::Deallocated => Method::REFRESH,
        Event::PermissionCreated { .. } => Method::CREATE_PERMISSION,
        Event::ChannelBound { .. } => Method::CHANNEL_BIND,
        Event::Connected { .. } => Method::CONNECT,
        Event::ConnectionAttempt { .. } => Method::CONNECTION_ATTEMPT,
        Event::ConnectionBound { .. } => Method::CONNECTION_BIND,
        Event::Failed { method, .. } => *method,
    }
}

/// A peer: a plain UDP socket on loopback.
pub fn peer_socket(ip: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind peer");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// One datagram on `sock` within `timeout`.
pub fn recv_within(sock: &UdpSocket, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    sock.set_read_timeout(Some(timeout)).expect("timeout");
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            buf.truncate(n);
            Some((buf, from))
        }
        Err(_) => None,
    }
}

/// Payloads of awkward sizes: empty, shorter than a word, not a multiple of 4, MTU-sized; the
/// bytes themselves are random so that a shifted or truncated copy cannot pass.
pub fn payloads() -> Vec<Vec<u8>> {
    [0usize, 1, 3, 4, 5, 63, 500, 1200]
        .iter()
        .map(|&n| (0..n).map(|_| rand::random::<u8>()).collect())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// A minimal HTTP/1.1 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to metrics");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (code, body)
}

/// One sample of the Prometheus text format.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed /metrics page.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (head, value) = line.rsplit_once(' ').expect("NAME VALUE");
            let value: f64 = value.parse().expect("numeric value");
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let labels = inner
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("k=v");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (n.to_string(), labels)
                }
                None => (head.to_string(), Vec::new()),
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Metrics {
            samples,
            text: text.to_string(),
        }
    }

    /// The sum of `name` over samples whose labels include all of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }

    /// `name` per worker label.
    pub fn per_worker(&self, name: &str) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.label("worker").map(|w| (w.to_string(), s.value)))
            .collect()
    }

    /// The worker labels that published anything.
    pub fn workers(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .samples
            .iter()
            .filter_map(|s| s.label("worker").map(str::to_string))
            .collect();
        w.sort();
        w.dedup();
        w
    }
}
