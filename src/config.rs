//! Configuration: command-line flags (clap) over a TOML file (serde) over the embedded default.
//! Everything is validated here, before any socket opens; an error names the key and the reason
//! on one line, and the binary exits with code 2.

use std::fmt;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use uturn_proto::turn::auth::Credentials;
use uturn_proto::turn::policy::{Cidr, PeerPolicy, PeerPolicyConfig};

use crate::driver::Backend;
use crate::stream_conn::StreamLimits;

/// The configuration used when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// uturn: a thread-per-core TURN/STUN relay (RFC 8656, RFC 8489).
#[derive(Parser, Debug, Default)]
#[command(version, about)]
pub struct Cli {
    /// TOML configuration file; flags override it. Without it the embedded default is used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// UDP listening address (repeatable).
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<String>,
    /// TURN over TCP listening address (repeatable; RFC 8656 section 3.1, port 3478).
    #[arg(long = "listen-tcp", value_name = "ADDR:PORT")]
    pub listen_tcp: Vec<String>,
    /// TURN over TLS listening address (repeatable; port 5349). Needs --tls-cert and --tls-key.
    #[arg(long = "listen-tls", value_name = "ADDR:PORT")]
    pub listen_tls: Vec<String>,
    /// PEM certificate chain for TLS, leaf first.
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (PKCS#8, PKCS#1 or SEC1).
    #[arg(long = "tls-key", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// RFC 5780 NAT behaviour discovery: the second IP address to answer from (off without it).
    #[arg(long = "alternate-ip", value_name = "IP")]
    pub alternate_ip: Option<String>,
    /// RFC 5780: the second port to answer from (with --alternate-ip).
    #[arg(long = "alternate-port", value_name = "PORT")]
    pub alternate_port: Option<u16>,
    /// Relay address, at most one IPv4 and one IPv6 (repeatable).
    #[arg(long = "relay-ip", value_name = "IP")]
    pub relay_ip: Vec<String>,
    /// Relay port range, split evenly between workers.
    #[arg(long = "relay-ports", value_name = "LO-HI")]
    pub relay_ports: Option<String>,
    #[arg(long)]
    pub realm: Option<String>,
    /// A static user (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    pub user: Vec<String>,
    /// A TURN REST shared secret (repeatable; all are accepted, for rotation).
    #[arg(long = "auth-secret", value_name = "SECRET")]
    pub auth_secret: Vec<String>,
    /// Worker threads, one per core by default.
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Let peers on loopback through the peer policy. For tests on one machine only.
    #[arg(long)]
    pub allow_loopback_peers: bool,
    /// Allow peers in this range even if the default policy refuses it (repeatable).
    #[arg(long = "allow-peer", value_name = "CIDR")]
    pub allow_peer: Vec<String>,
    /// Refuse peers in this range (repeatable); wins over everything else.
    #[arg(long = "deny-peer", value_name = "CIDR")]
    pub deny_peer: Vec<String>,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// tracing filter, e.g. info or uturn=debug.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// The file format: the same keys as the flags (with underscores), plus tuning keys.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Vec<String>>,
    pub listen_tcp: Option<Vec<String>>,
    pub listen_tls: Option<Vec<String>>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `nat_discovery = { alternate_ip = "...", alternate_port = N }`.
    pub nat_discovery: Option<NatDiscoveryFile>,
    pub relay_ip: Option<Vec<String>>,
    pub relay_ports: Option<String>,
    pub realm: Option<String>,
    pub user: Option<Vec<String>>,
    pub auth_secret: Option<Vec<String>>,
    pub threads: Option<usize>,
    pub backend: Option<String>,
    pub allow_loopback_peers: Option<bool>,
    pub allow_peer: Option<Vec<String>>,
    pub deny_peer: Option<Vec<String>>,
    pub metrics: Option<String>,
    pub log_level: Option<String>,
    /// Seconds.
    pub default_lifetime: Option<u64>,
    pub max_lifetime: Option<u64>,
    pub nonce_validity: Option<u64>,
    pub max_allocations: Option<usize>,
    pub max_allocations_per_user: Option<usize>,
    pub max_permissions_per_allocation: Option<usize>,
    pub max_channels_per_allocation: Option<usize>,
    /// Bytes per second per allocation.
    pub bandwidth_limit: Option<u64>,
    pub software: Option<String>,
    pub mapped_address: Option<bool>,
    /// RFC 6062: seconds a Connect may take (at least 30), and data connections per allocation.
    pub tcp_connect_timeout: Option<u64>,
    pub max_tcp_connections_per_allocation: Option<usize>,
    /// Client connections over TCP and TLS (seconds; bytes): see `StreamLimits`.
    pub tcp_handshake_timeout: Option<u64>,
    pub tcp_partial_timeout: Option<u64>,
    pub tcp_idle_timeout: Option<u64>,
    pub tcp_stall_timeout: Option<u64>,
    pub tcp_max_outbound: Option<usize>,
    /// Client connections over TCP and TLS open at once, all workers together.
    pub tcp_max_connections: Option<usize>,
}

/// The `nat_discovery` table.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct NatDiscoveryFile {
    pub alternate_ip: Option<String>,
    pub alternate_port: Option<u16>,
}

/// RFC 5780 NAT behaviour discovery: the primary UDP listening address and the alternates. Each
/// worker listens on all four combinations of {primary, alternate} IP x {primary, alternate}
/// port (RFC 5780 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatDiscoveryConfig {
    pub primary: SocketAddr,
    pub alternate_ip: IpAddr,
    pub alternate_port: u16,
}

impl NatDiscoveryConfig {
    /// The three listening addresses besides the primary: other port, other IP, both.
    pub fn extra_listeners(&self) -> [SocketAddr; 3] {
        let p = self.primary;
        [
            SocketAddr::new(p.ip(), self.alternate_port),
            SocketAddr::new(self.alternate_ip, p.port()),
            SocketAddr::new(self.alternate_ip, self.alternate_port),
        ]
    }
}

/// A configuration error: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// TURN limits, passed to every worker's server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub nonce_validity: Duration,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    pub bandwidth_limit: Option<u64>,
    pub software: Option<String>,
    pub mapped_address: bool,
    pub tcp_connect_timeout: Duration,
    pub max_tcp_connections_per_allocation: usize,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub listen: Vec<SocketAddr>,
    pub listen_tcp: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    /// The TLS configuration, built from `tls_cert` and `tls_key` when TLS listens.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub nat_discovery: Option<NatDiscoveryConfig>,
    /// Bounds and timers of every client connection over TCP and TLS.
    pub stream_limits: StreamLimits,
    /// Client connections over TCP and TLS open at once, all workers together (each worker
    /// takes its share); more are closed as they are accepted.
    pub tcp_max_connections: usize,
    pub relay_v4: Option<IpAddr>,
    pub relay_v6: Option<IpAddr>,
    pub relay_ports: RangeInclusive<u16>,
    pub realm: String,
    pub users: Vec<(String, String)>,
    pub secrets: Vec<String>,
    pub threads: usize,
    pub backend: Backend,
    pub policy: PeerPolicyConfig,
    pub metrics: Option<SocketAddr>,
    pub log_level: String,
    pub limits: Limits,
    /// Set when the embedded demo user was created: its password, to print once.
    pub demo_password: Option<String>,
}

impl Settings {
    /// Credentials for a worker's server.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        Credentials::new(&self.realm, self.users.iter().cloned(), self.secrets.iter())
            .map_err(|e| err("user", e.to_string()))
    }

    /// Every UDP listening address of a worker, in the order of their socket ids: the `listen`
    /// addresses, then the three RFC 5780 alternates when NAT discovery is on.
    pub fn udp_listeners(&self) -> Vec<SocketAddr> {
        self.listen
            .iter()
            .copied()
            .chain(self.nat_discovery.iter().flat_map(|n| n.extra_listeners()))
            .collect()
    }

    pub fn peer_policy(&self) -> PeerPolicy {
        PeerPolicy::new(&self.policy)
    }

    /// The ports of worker `i` of `self.threads`.
    pub fn worker_ports(&self, i: usize) -> RangeInclusive<u16> {
        let lo = u32::from(*self.relay_ports.start());
        let n = u32::from(*self.relay_ports.end()) - lo + 1;
        let per = n / self.threads as u32;
        let start = lo + per * i as u32;
        let end = if i + 1 == self.threads {
            u32::from(*self.relay_ports.end())
        } else {
            start + per - 1
        };
        start as u16..=end as u16
    }
}

/// Loads and validates: the file (or the embedded default), then the flags on top.
pub fn load(cli: &Cli) -> Result<Settings, ConfigError> {
    let (text, from_file) = match &cli.config {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| err("config", format!("{}: {e}", path.display())))?,
            true,
        ),
        None => (EMBEDDED_DEFAULT.to_string(), false),
    };
    let file: FileConfig = toml::from_str(&text).map_err(|e| toml_error(&e, &text))?;
    resolve(cli, file, from_file)
}

/// Turns a TOML error into one line that names the key.
fn toml_error(e: &toml::de::Error, text: &str) -> ConfigError {
    let msg = e.message().replace('\n', " ");
    // serde names unknown keys in the message; for type and syntax errors toml gives only the
    // span of the offending value, so the key is read from the start of that line.
    let line = e.span().and_then(|span| {
        let start = span.start.min(text.len());
        let from = text.get(..start)?.rfind('\n').map_or(0, |i| i + 1);
        let number = text.get(..from)?.matches('\n').count() + 1;
        let key = text
            .get(from..)?
            .lines()
            .next()
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim())
            .filter(|k| {
                !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .map(str::to_string);
        Some((key, number))
    });
    let key = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
        .map(str::to_string)
        .or_else(|| line.as_ref().and_then(|(k, _)| k.clone()))
        .unwrap_or_else(|| "config".to_string());
    match line {
        Some((_, n)) => err(&key, format!("{msg} (line {n})")),
        None => err(&key, msg),
    }
}

fn pick<T>(flag: Option<T>, file: Option<T>) -> Option<T> {
    flag.or(file)
}

fn pick_vec(flag: &[String], file: Option<Vec<String>>) -> Vec<String> {
    if flag.is_empty() {
        file.unwrap_or_default()
    } else {
        flag.to_vec()
    }
}

fn resolve(cli: &Cli, f: FileConfig, from_file: bool) -> Result<Settings, ConfigError> {
    let mut listen = Vec::new();
    for s in pick_vec(&cli.listen, f.listen) {
        let a: SocketAddr = s
            .parse()
            .map_err(|_| err("listen", format!("`{s}` is not ADDR:PORT")))?;
        if a.port() == 0 {
            return Err(err(
                "listen",
                format!("`{s}`: port 0 is not a listening port"),
            ));
        }
        // The embedded default lists [::1] too; it is kept only where IPv6 works.
        if !from_file && cli.listen.is_empty() && a.is_ipv6() && !ipv6_available() {
            continue;
        }
        if !listen.contains(&a) {
            listen.push(a);
        }
    }
    if listen.is_empty() {
        return Err(err("listen", "no listening address"));
    }
    // The embedded default's TCP listeners go with its UDP ones: `--listen` alone means UDP.
    let default_tcp = from_file || cli.listen.is_empty();
    let listen_tcp = stream_listeners(
        "listen_tcp",
        &cli.listen_tcp,
        f.listen_tcp.filter(|_| default_tcp),
        from_file,
    )?;
    let listen_tls = stream_listeners("listen_tls", &cli.listen_tls, f.listen_tls, from_file)?;
    if let Some(a) = listen_tcp.iter().find(|a| listen_tls.contains(a)) {
        return Err(err(
            "listen_tls",
            format!("{a} is a TCP listening address too"),
        ));
    }
    let tls_cert = cli.tls_cert.clone().or(f.tls_cert);
    let tls_key = cli.tls_key.clone().or(f.tls_key);
    let tls = match (listen_tls.is_empty(), tls_cert, tls_key) {
        (true, _, _) => None,
        (false, Some(cert), Some(key)) => Some(
            crate::tls::server_config_from_files(&cert, &key)
                .map_err(|e| err("tls_cert", e.to_string()))?,
        ),
        (false, None, _) => return Err(err("tls_cert", "required with listen_tls")),
        (false, _, None) => return Err(err("tls_key", "required with listen_tls")),
    };

    let mut relay_v4 = None;
    let mut relay_v6 = None;
    let relay_ips = pick_vec(&cli.relay_ip, f.relay_ip);
    for s in &relay_ips {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| err("relay_ip", format!("`{s}` is not an IP address")))?;
        if ip.is_unspecified() {
            return Err(err(
                "relay_ip",
                format!("`{s}`: a relay address must be concrete"),
            ));
        }
        let slot = if ip.is_ipv4() {
            &mut relay_v4
        } else {
            &mut relay_v6
        };
        if slot.replace(ip).is_some_and(|old| old != ip) {
            return Err(err("relay_ip", "at most one IPv4 and one IPv6 address"));
        }
    }
    if relay_ips.is_empty() {
        // Relay on the listening addresses, which must then be concrete.
        for a in &listen {
            if a.ip().is_unspecified() {
                return Err(err(
                    "relay_ip",
                    format!("required when listening on the wildcard address {a}"),
                ));
            }
            let slot = if a.is_ipv4() {
                &mut relay_v4
            } else {
                &mut relay_v6
            };
            slot.get_or_insert(a.ip());
        }
    }

    let ports = pick(cli.relay_ports.clone(), f.relay_ports).unwrap_or("49152-65535".into());
    let relay_ports = parse_ports(&ports)?;

    let threads = match pick(cli.threads, f.threads) {
        Some(0) => return Err(err("threads", "must be at least 1")),
        // An RFC 6062 CONNECTION-ID names its worker in one byte.
        Some(n) if n > 256 => return Err(err("threads", "at most 256")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(256)),
    };
    let nports = usize::from(*relay_ports.end() - *relay_ports.start()) + 1;
    if nports < threads {
        return Err(err(
            "relay_ports",
            format!("{nports} ports cannot be split between {threads} workers"),
        ));
    }
    let nat_discovery = nat_discovery(cli, f.nat_discovery, &listen)?;
    let all_udp: Vec<SocketAddr> = listen
        .iter()
        .copied()
        .chain(nat_discovery.iter().flat_map(|n| n.extra_listeners()))
        .collect();
    for a in all_udp.iter().chain(&listen_tcp).chain(&listen_tls) {
        if relay_ports.contains(&a.port())
            && [relay_v4, relay_v6]
                .iter()
                .flatten()
                .any(|ip| *ip == a.ip() || a.ip().is_unspecified())
        {
            return Err(err(
                "relay_ports",
                format!("{ports} overlaps the listening port of {a}"),
            ));
        }
    }

    let realm = pick(cli.realm.clone(), f.realm).unwrap_or_else(|| "uturn.local".into());
    if realm.is_empty() || realm.len() > 762 {
        return Err(err("realm", "must be 1 to 762 bytes"));
    }

    let mut users = Vec::new();
    for u in pick_vec(&cli.user, f.user) {
        let Some((name, pass)) = u.split_once(':') else {
            return Err(err("user", format!("`{u}` is not NAME:PASSWORD")));
        };
        if name.is_empty() || pass.is_empty() {
            return Err(err("user", format!("`{u}`: empty name or password")));
        }
        users.push((name.to_string(), pass.to_string()));
    }
    let secrets = pick_vec(&cli.auth_secret, f.auth_secret);
    let mut demo_password = None;
    if users.is_empty() && secrets.is_empty() {
        if from_file {
            return Err(err(
                "user",
                "no users and no auth_secret: refusing to run an open relay",
            ));
        }
        // The embedded default: a demo user with a fresh random password.
        let pass = random_password();
        users.push(("demo".to_string(), pass.clone()));
        demo_password = Some(pass);
    }

    let backend = match (cli.backend, f.backend.as_deref()) {
        (Some(b), _) => b,
        (None, None) => Backend::Auto,
        (None, Some(s)) => <Backend as clap::ValueEnum>::from_str(s, true).map_err(|_| {
            err(
                "backend",
                format!("`{s}`: expected auto, uring or portable"),
            )
        })?,
    };

    let cidrs = |key: &str, v: Vec<String>| -> Result<Vec<Cidr>, ConfigError> {
        v.iter()
            .map(|s| {
                s.parse::<Cidr>()
                    .map_err(|e| err(key, format!("`{s}`: {e}")))
            })
            .collect()
    };
    let policy = PeerPolicyConfig {
        allow: cidrs("allow_peer", pick_vec(&cli.allow_peer, f.allow_peer))?,
        deny: cidrs("deny_peer", pick_vec(&cli.deny_peer, f.deny_peer))?,
        allow_loopback: cli.allow_loopback_peers || f.allow_loopback_peers.unwrap_or(false),
        listen: all_udp
            .iter()
            .chain(&listen_tcp)
            .chain(&listen_tls)
            .copied()
            .collect(),
        relay_ips: [relay_v4, relay_v6].into_iter().flatten().collect(),
        relay_ports: relay_ports.clone(),
    };

    let metrics = match pick(cli.metrics.clone(), f.metrics) {
        Some(s) => Some(
            s.parse::<SocketAddr>()
                .map_err(|_| err("metrics", format!("`{s}` is not ADDR:PORT")))?,
        ),
        None => None,
    };
    let log_level = pick(cli.log_level.clone(), f.log_level).unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        return Err(err(
            "log_level",
            format!("`{log_level}` is not a tracing filter"),
        ));
    }

    let secs = |key: &str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
        match v.unwrap_or(default) {
            0 => Err(err(key, "must be at least 1 second")),
            s => Ok(Duration::from_secs(s)),
        }
    };
    let limits = Limits {
        default_lifetime: secs("default_lifetime", f.default_lifetime, 600)?,
        max_lifetime: secs("max_lifetime", f.max_lifetime, 3600)?,
        nonce_validity: secs("nonce_validity", f.nonce_validity, 600)?,
        max_allocations: f.max_allocations.unwrap_or(1_000_000),
        max_allocations_per_user: f.max_allocations_per_user.unwrap_or(1_000_000),
        max_permissions_per_allocation: f.max_permissions_per_allocation.unwrap_or(64),
        max_channels_per_allocation: f.max_channels_per_allocation.unwrap_or(64),
        bandwidth_limit: f.bandwidth_limit,
        software: f.software,
        mapped_address: f.mapped_address.unwrap_or(false),
        tcp_connect_timeout: Duration::from_secs(f.tcp_connect_timeout.unwrap_or(30)),
        max_tcp_connections_per_allocation: f.max_tcp_connections_per_allocation.unwrap_or(64),
    };
    let d = StreamLimits::default();
    let stream_limits = StreamLimits {
        max_outbound: f.tcp_max_outbound.unwrap_or(d.max_outbound),
        handshake_timeout: secs(
            "tcp_handshake_timeout",
            f.tcp_handshake_timeout,
            d.handshake_timeout.as_secs(),
        )?,
        partial_timeout: secs(
            "tcp_partial_timeout",
            f.tcp_partial_timeout,
            d.partial_timeout.as_secs(),
        )?,
        idle_timeout: secs(
            "tcp_idle_timeout",
            f.tcp_idle_timeout,
            d.idle_timeout.as_secs(),
        )?,
        stall_timeout: secs(
            "tcp_stall_timeout",
            f.tcp_stall_timeout,
            d.stall_timeout.as_secs(),
        )?,
    };
    let tcp_max_connections = f.tcp_max_connections.unwrap_or(20_000);
    if tcp_max_connections == 0 {
        return Err(err("tcp_max_connections", "must be at least 1"));
    }
    // The largest message (64 KiB + header) must fit, or a client could never be answered.
    if stream_limits.max_outbound < 70_000 {
        return Err(err("tcp_max_outbound", "must be at least 70000 bytes"));
    }
    if limits.tcp_connect_timeout < Duration::from_secs(30) {
        // RFC 6062 section 5.2: "MUST be at least 30 seconds".
        return Err(err("tcp_connect_timeout", "must be at least 30 seconds"));
    }
    if limits.max_lifetime < limits.default_lifetime {
        return Err(err("max_lifetime", "must not be below default_lifetime"));
    }
    if limits.bandwidth_limit == Some(0) {
        return Err(err(
            "bandwidth_limit",
            "must be positive (leave it out for no cap)",
        ));
    }

    let s = Settings {
        config_file: cli.config.clone(),
        listen,
        listen_tcp,
        listen_tls,
        tls,
        nat_discovery,
        stream_limits,
        tcp_max_connections,
        relay_v4,
        relay_v6,
        relay_ports,
        realm,
        users,
        secrets,
        threads,
        backend,
        policy,
        metrics,
        log_level,
        limits,
        demo_password,
    };
    s.credentials()?;
    Ok(s)
}

/// TCP or TLS listening addresses from the flag or the file. Like the UDP ones, the embedded
/// default's IPv6 entries are kept only where IPv6 works.
fn stream_listeners(
    key: &str,
    flag: &[String],
    file: Option<Vec<String>>,
    from_file: bool,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out = Vec::new();
    for s in pick_vec(flag, file) {
        let a: SocketAddr = s
            .parse()
            .map_err(|_| err(key, format!("`{s}` is not ADDR:PORT")))?;
        if a.port() == 0 {
            return Err(err(key, format!("`{s}`: port 0 is not a listening port")));
        }
        if !from_file && flag.is_empty() && a.is_ipv6() && !ipv6_available() {
            continue;
        }
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

/// RFC 5780 mode: on only with an alternate IP address. The primary is the first UDP listening
/// address of the alternate's family, which must be concrete (an answer has to come from a
/// known address, RESPONSE-ORIGIN).
fn nat_discovery(
    cli: &Cli,
    file: Option<NatDiscoveryFile>,
    listen: &[SocketAddr],
) -> Result<Option<NatDiscoveryConfig>, ConfigError> {
    let file = file.unwrap_or_default();
    let key = "nat_discovery";
    let ip = cli.alternate_ip.clone().or(file.alternate_ip);
    let port = cli.alternate_port.or(file.alternate_port);
    let Some(ip) = ip else {
        if port.is_some() {
            return Err(err(key, "alternate_port needs alternate_ip"));
        }
        return Ok(None);
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| err(key, format!("alternate_ip `{ip}` is not an IP address")))?;
    if ip.is_unspecified() {
        return Err(err(key, "alternate_ip must be a concrete address"));
    }
    let Some(&primary) = listen.iter().find(|a| a.is_ipv4() == ip.is_ipv4()) else {
        return Err(err(
            key,
            format!("no UDP listening address of the family of {ip}"),
        ));
    };
    if primary.ip().is_unspecified() {
        return Err(err(
            key,
            format!("the primary address {primary} must be concrete"),
        ));
    }
    if primary.ip() == ip {
        return Err(err(
            key,
            "alternate_ip must differ from the listening address",
        ));
    }
    let port = port.unwrap_or(primary.port().wrapping_add(1).max(1));
    if port == primary.port() || port == 0 {
        return Err(err(
            key,
            format!("alternate_port {port} must differ from the listening port"),
        ));
    }
    Ok(Some(NatDiscoveryConfig {
        primary,
        alternate_ip: ip,
        alternate_port: port,
    }))
}

fn parse_ports(s: &str) -> Result<RangeInclusive<u16>, ConfigError> {
    let bad = || {
        err(
            "relay_ports",
            format!("`{s}` is not LO-HI with 1 <= LO <= HI <= 65535"),
        )
    };
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

fn ipv6_available() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

fn random_password() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["uturn"];
        v.extend_from_slice(args);
        Cli::parse_from(v)
    }

    fn from_toml(text: &str, args: &[&str]) -> Result<Settings, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| toml_error(&e, text))?;
        resolve(&cli(args), file, true)
    }

    #[test]
    fn embedded_default_makes_a_demo_user_on_loopback() {
        let s = load(&cli(&["--threads", "2"])).unwrap();
        assert!(s.listen.contains(&"127.0.0.1:3478".parse().unwrap()));
        assert_eq!(s.realm, "uturn.local");
        assert_eq!(s.users.len(), 1);
        assert_eq!(s.users[0].0, "demo");
        assert_eq!(s.demo_password.as_deref(), Some(s.users[0].1.as_str()));
        assert_eq!(s.relay_v4, Some("127.0.0.1".parse().unwrap()));
        assert!(
            !s.policy.allow_loopback,
            "loopback peers stay refused by default"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let s = from_toml(
            "listen = [\"127.0.0.1:4000\"]\nuser = [\"a:b\"]\nthreads = 3\nrealm = \"f\"",
            &["--threads", "2", "--realm", "x"],
        )
        .unwrap();
        assert_eq!(s.threads, 2);
        assert_eq!(s.realm, "x");
        assert_eq!(
            s.listen,
            vec!["127.0.0.1:4000".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("bogus = 1\nuser=[\"a:b\"]", &[], "bogus"),
            ("user=[\"a:b\"]\nrelay_ports = \"5-1\"", &[], "relay_ports"),
            ("user=[\"a:b\"]\nlisten = [\"nope\"]", &[], "listen"),
            ("user=[\"ab\"]", &[], "user"),
            ("", &[], "user"),
            ("user=[\"a:b\"]\nthreads = 0", &[], "threads"),
            ("user=[\"a:b\"]\nthreads = \"many\"", &[], "threads"),
            ("user=[\"a:b\"]\nrelay_ip = \"127.0.0.1\"", &[], "relay_ip"),
            ("user=[\"a:b\"]\nsoftware = [1, 2", &[], "software"),
            ("user=[\"a:b\"]\nbackend = \"fast\"", &[], "backend"),
            (
                "user=[\"a:b\"]\nallow_peer = [\"10.0.0.1/8\"]",
                &[],
                "allow_peer",
            ),
            (
                "user=[\"a:b\"]\nlisten = [\"0.0.0.0:3478\"]",
                &[],
                "relay_ip",
            ),
            (
                "user=[\"a:b\"]\nrelay_ports = \"3000-4000\"",
                &["--listen", "127.0.0.1:3478"],
                "relay_ports",
            ),
            ("user=[\"a:b\"]\nmetrics = \"x\"", &[], "metrics"),
            ("user=[\"a:b\"]\nmax_lifetime = 10", &[], "max_lifetime"),
            (
                "user=[\"a:b\"]\nrelay_ports = \"1000-1001\"\nthreads = 4",
                &[],
                "relay_ports",
            ),
        ];
        for (text, args, key) in cases {
            let text = format!("listen = [\"127.0.0.1:3478\"]\n{text}");
            let text = if text.contains("listen = [\"nope\"]") || text.contains("0.0.0.0") {
                text.replacen("listen = [\"127.0.0.1:3478\"]\n", "", 1)
            } else {
                text
            };
            let e = from_toml(&text, args).expect_err(&text);
            assert_eq!(e.key, *key, "{text}: {e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn tcp_tls_and_nat_discovery_settings() {
        // The embedded default listens for TCP next to UDP, and not for TLS (no certificate).
        let s = load(&cli(&["--threads", "1"])).unwrap();
        assert!(s.listen_tcp.contains(&"127.0.0.1:3478".parse().unwrap()));
        assert!(s.listen_tls.is_empty() && s.tls.is_none());
        assert!(s.nat_discovery.is_none(), "RFC 5780 is off by default");
        // `--listen` alone means UDP only.
        let s = load(&cli(&["--threads", "1", "--listen", "127.0.0.1:4000"])).unwrap();
        assert!(s.listen_tcp.is_empty());

        let base =
            "listen = [\"127.0.0.1:3478\"]\nuser = [\"a:b\"]\nrelay_ports = \"50000-50100\"\n";
        let s = from_toml(
            &format!("{base}listen_tcp = [\"127.0.0.1:3478\"]\nnat_discovery = {{ alternate_ip = \"127.0.0.2\", alternate_port = 3479 }}"),
            &[],
        )
        .unwrap();
        let nd = s.nat_discovery.unwrap();
        assert_eq!(nd.primary, "127.0.0.1:3478".parse().unwrap());
        assert_eq!(
            s.udp_listeners(),
            [
                "127.0.0.1:3478",
                "127.0.0.1:3479",
                "127.0.0.2:3478",
                "127.0.0.2:3479"
            ]
            .map(|a| a.parse::<SocketAddr>().unwrap())
        );
        // The flags do the same.
        let s = from_toml(
            base,
            &["--alternate-ip", "127.0.0.3", "--alternate-port", "4000"],
        )
        .unwrap();
        assert_eq!(s.udp_listeners()[3], "127.0.0.3:4000".parse().unwrap());
        // The server's own TCP sockets are no peers.
        let s = from_toml(
            &format!("{base}listen_tcp = [\"127.0.0.1:3478\"]"),
            &["--listen-tcp", "127.0.0.1:5000"],
        )
        .unwrap();
        assert_eq!(
            s.listen_tcp,
            vec!["127.0.0.1:5000".parse::<SocketAddr>().unwrap()]
        );
        assert!(s.policy.listen.contains(&"127.0.0.1:5000".parse().unwrap()));

        // TLS: a certificate and key that load.
        let ck = rcgen::generate_simple_self_signed(vec!["turn.test".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("uturn-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let tls = format!(
            "{base}listen_tls = [\"127.0.0.1:5349\"]\ntls_cert = {cert:?}\ntls_key = {key:?}"
        );
        let s = from_toml(&tls, &[]).unwrap();
        assert!(s.tls.is_some());
        assert_eq!(
            s.listen_tls,
            vec!["127.0.0.1:5349".parse::<SocketAddr>().unwrap()]
        );

        let cases: Vec<(String, &str)> = vec![
            (format!("{base}listen_tcp = [\"nope\"]"), "listen_tcp"),
            (format!("{base}listen_tls = [\"127.0.0.1:5349\"]"), "tls_cert"),
            (
                format!("{base}listen_tls = [\"127.0.0.1:5349\"]\ntls_cert = {cert:?}"),
                "tls_key",
            ),
            (
                format!("{base}listen_tls = [\"127.0.0.1:5349\"]\ntls_cert = {key:?}\ntls_key = {key:?}"),
                "tls_cert",
            ),
            (
                format!("{base}listen_tcp = [\"127.0.0.1:5349\"]\nlisten_tls = [\"127.0.0.1:5349\"]\ntls_cert = {cert:?}\ntls_key = {key:?}"),
                "listen_tls",
            ),
            (format!("{base}listen_tcp = [\"127.0.0.1:50050\"]"), "relay_ports"),
            (format!("{base}tcp_max_connections = 0"), "tcp_max_connections"),
            (format!("{base}nat_discovery = {{ alternate_port = 3479 }}"), "nat_discovery"),
            (format!("{base}nat_discovery = {{ alternate_ip = \"127.0.0.1\" }}"), "nat_discovery"),
            (format!("{base}nat_discovery = {{ alternate_ip = \"::2\" }}"), "nat_discovery"),
            (
                format!("{base}nat_discovery = {{ alternate_ip = \"127.0.0.2\", alternate_port = 3478 }}"),
                "nat_discovery",
            ),
            (format!("{base}nat_discovery = {{ alternate_ip = \"x\" }}"), "nat_discovery"),
            (format!("{base}nat_discovery = {{ bogus = 1 }}"), "bogus"),
            (format!("{base}tcp_connect_timeout = 5"), "tcp_connect_timeout"),
            (format!("{base}tcp_max_outbound = 100"), "tcp_max_outbound"),
            (format!("{base}tcp_idle_timeout = 0"), "tcp_idle_timeout"),
            (format!("{base}threads = 300"), "threads"),
        ];
        for (text, key) in cases {
            let e = from_toml(&text, &[]).expect_err(&text);
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ports_split_between_workers_cover_the_range() {
        let s = from_toml(
            "listen=[\"127.0.0.1:3478\"]\nuser=[\"a:b\"]\nrelay_ports=\"50000-50009\"\nthreads=3",
            &[],
        )
        .unwrap();
        let parts: Vec<_> = (0..3).map(|i| s.worker_ports(i)).collect();
        assert_eq!(parts, vec![50000..=50002, 50003..=50005, 50006..=50009]);
    }
}
