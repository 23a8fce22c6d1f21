//! The command line (clap) and its validation into a [`Config`]. Every check that can fail
//! before a packet is sent fails here, with a message that names the flag.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{ArgGroup, Parser, ValueEnum};
use uturn::driver::Backend;

use crate::duration;
use crate::nat::NatSpec;
use crate::stats::PROBE_LEN;
use crate::stream_leg::{TlsSetup, Transport};
use crate::turn_only::Credentials;

/// loadgen: thousands of TURN clients or ICE agents against any TURN server, measuring setup
/// time, throughput, loss and latency.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
#[command(group(ArgGroup::new("auth").required(true).args(["user", "auth_secret"])))]
pub struct Args {
    /// The TURN server, HOST:PORT (UDP). Loopback only unless --allow-remote.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,
    #[arg(long)]
    pub realm: String,
    /// Long-term credentials.
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub user: Option<String>,
    /// A TURN REST shared secret: loadgen makes time-limited credentials from it.
    #[arg(long, value_name = "SECRET")]
    pub auth_secret: Option<String>,
    /// Agents (TURN clients in turn-only mode), in pairs; an odd number is rounded up. Not with
    /// --nat-matrix, which runs one pair per case.
    #[arg(long, value_name = "N", required_unless_present = "nat_matrix")]
    pub agents: Option<u64>,
    /// How long the media flows at full strength, after the ramp.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Pairs start spread evenly over this time.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// Packets per second each agent sends.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Payload bytes per packet (at least 24: sequence number, timestamp, sender).
    #[arg(long, default_value_t = 160)]
    pub size: usize,
    /// Send as fast as possible instead of --rate.
    #[arg(long)]
    pub max_rate: bool,
    /// Each agent sends N probes back to back, which leave as one UDP GSO send (a stand-in for
    /// the coalescing a NIC's GRO does in front of a relay); 1 is off.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub gso_burst: usize,
    /// Which candidates ICE agents may use (ice mode).
    #[arg(long, value_enum, default_value_t = Policy::All)]
    pub policy: Policy,
    /// NATs in front of each agent's network: MAPPING-FILTERING (eim|adm|apdm - eif|adf|apdf),
    /// an alias (full-cone, restricted-cone, port-restricted, symmetric), mix or none, with an
    /// optional :timeout=DURATION.
    #[arg(long, value_name = "SPEC")]
    pub nat: Option<String>,
    /// One pair for every combination of NAT behaviours, and a table of the outcome (ice mode).
    #[arg(long)]
    pub nat_matrix: bool,
    /// Drop every NAT mapping halfway through the run.
    #[arg(long)]
    pub chaos: bool,
    /// Worker threads (one per core by default, at most one per pair).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// The relay's PID: report its CPU time over the measured window.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw pps and p99 latency per second into this SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Allow a --server that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// What the agents are.
    #[arg(long, value_enum, default_value_t = Mode::TurnOnly)]
    pub mode: Mode,
    /// An agent not connected this long after it started has failed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub setup_timeout: Duration,
    /// ICE consent timeout (RFC 7675): a selected pair without a consent answer this long is
    /// lost, and the pair restarts ICE. Consent checks go every sixth of it.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub consent_timeout: Duration,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// How agents reach the server (the client-to-server leg; relaying stays UDP): --server is
    /// the address of the server's listener for it.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    pub transport: Transport,
    /// --transport tls: the PEM certificates to trust (the server's own, or its CA).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// --transport tls: the name to check the server's certificate for (default: the
    /// --server host).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// No live progress display.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s).map_err(|e| e.to_string())
}

/// `--policy`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Host, server-reflexive and relayed candidates.
    All,
    /// Relayed candidates only (iceTransportPolicy "relay").
    Relay,
}

/// `--mode`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// TURN clients in pairs relaying to each other's relayed addresses: no ICE.
    TurnOnly,
    /// Pairs of ICE agents (RFC 8445): host, server-reflexive and relayed candidates.
    Ice,
    /// Allocation churn: `--agents` clients allocate, delete and allocate again; reports
    /// authenticated allocations per second (see `churn.rs`).
    Churn,
    /// `--agents` idle allocations held for `--duration`; reports the server's memory per
    /// allocation (see `idle.rs`).
    Idle,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::TurnOnly => "turn-only",
            Mode::Ice => "ice",
            Mode::Churn => "churn",
            Mode::Idle => "idle",
        }
    }
}

/// Largest `--size`: a probe plus the ChannelData header fits one driver buffer.
pub const MAX_SIZE: usize = 1400;
/// Most agents one run accepts: every agent is an emulated host in a /24 of its own LAN range,
/// and ids are 32-bit.
pub const MAX_AGENTS: u64 = 1 << 20;

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: SocketAddr,
    pub credentials: Credentials,
    /// Even.
    pub agents: u64,
    pub duration: Duration,
    pub ramp: Duration,
    pub rate: u32,
    pub size: usize,
    pub max_rate: bool,
    pub gso_burst: usize,
    pub policy: Policy,
    pub nat: NatSpec,
    pub nat_matrix: bool,
    pub chaos: bool,
    pub threads: usize,
    pub server_pid: Option<u32>,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
    pub mode: Mode,
    pub setup_timeout: Duration,
    pub consent_timeout: Duration,
    pub backend: Backend,
    pub quiet: bool,
    pub transport: Transport,
    /// For `--transport tls`.
    pub tls: Option<TlsSetup>,
    /// Things worth telling the user that are not errors (an odd agent count rounded up).
    pub notes: Vec<String>,
}

/// A configuration error: the flag and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
}

fn err(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

/// How long REST credentials stay valid beyond the run.
const REST_MARGIN: Duration = Duration::from_secs(3600);

impl Config {
    pub fn from_args(a: Args) -> Result<Config, ConfigError> {
        let server = resolve(&a.server)?;
        if !server.ip().is_loopback() && !a.allow_remote {
            return Err(err(
                "server",
                format!("{server} is not a loopback address; loadgen sends heavy traffic, so a remote server needs --allow-remote"),
            ));
        }
        if a.realm.is_empty() {
            return Err(err("realm", "must not be empty"));
        }
        let credentials = match (&a.user, &a.auth_secret) {
            (Some(u), None) => {
                let (name, pass) = u
                    .split_once(':')
                    .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                    .ok_or_else(|| err("user", "expected NAME:PASSWORD"))?;
                Credentials {
                    username: name.into(),
                    password: pass.into(),
                    realm: a.realm.clone(),
                }
            }
            (None, Some(secret)) => {
                if secret.is_empty() {
                    return Err(err("auth-secret", "must not be empty"));
                }
                // draft-uberti-behave-turn-rest-00 section 2.2: "expiry:name", expiry in Unix
                // seconds, password base64(HMAC-SHA1(secret, username)).
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let expiry = now + (a.ramp + a.duration + REST_MARGIN).as_secs();
                let username = format!("{expiry}:loadgen");
                let password = uturn_proto::turn::auth::rest_password(secret.as_bytes(), &username);
                Credentials {
                    username,
                    password,
                    realm: a.realm.clone(),
                }
            }
            // clap's group makes exactly one present; this is for callers building Args.
            _ => return Err(err("user", "give exactly one of --user and --auth-secret")),
        };
        let mut notes = Vec::new();
        let asked = match (a.agents, a.nat_matrix) {
            (Some(_), true) => {
                return Err(err(
                    "agents",
                    "--nat-matrix runs one pair per case; leave --agents out",
                ))
            }
            (Some(n), false) => n,
            (None, true) => 2 * crate::ice::matrix::cases(Duration::ZERO).len() as u64,
            // clap requires one of the two; this is for callers building Args.
            (None, false) => return Err(err("agents", "required")),
        };
        if asked < 2 {
            return Err(err("agents", "at least 2 (agents run in pairs)"));
        }
        if asked > MAX_AGENTS {
            return Err(err("agents", format!("at most {MAX_AGENTS}")));
        }
        let agents = asked + asked % 2;
        if agents != asked {
            notes.push(format!(
                "--agents {asked} rounded up to {agents}: agents run in pairs"
            ));
        }
        if a.duration.is_zero() {
            return Err(err("duration", "must be positive"));
        }
        if !a.max_rate && a.rate == 0 {
            return Err(err("rate", "must be at least 1 (or use --max-rate)"));
        }
        if a.rate > 1_000_000 {
            return Err(err("rate", "at most 1000000 per agent (use --max-rate)"));
        }
        if !(1..=uturn::driver::gso::MAX_SEGMENTS).contains(&a.gso_burst) {
            return Err(err(
                "gso-burst",
                format!("1 to {} probes", uturn::driver::gso::MAX_SEGMENTS),
            ));
        }
        if !(PROBE_LEN..=MAX_SIZE).contains(&a.size) {
            return Err(err("size", format!("{PROBE_LEN} to {MAX_SIZE} bytes")));
        }
        if a.setup_timeout.is_zero() {
            return Err(err("setup-timeout", "must be positive"));
        }
        if a.consent_timeout < Duration::from_secs(1) {
            return Err(err("consent-timeout", "at least 1s"));
        }
        let nat = match &a.nat {
            Some(s) => s
                .parse::<NatSpec>()
                .map_err(|e| err("nat", e.to_string()))?,
            None => NatSpec::None,
        };
        let pairs = agents / 2;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = match a.threads {
            Some(0) => return Err(err("threads", "at least 1")),
            Some(t) => t,
            None => cores,
        };
        let threads = threads.min(usize::try_from(pairs).unwrap_or(usize::MAX));
        if a.mode == Mode::TurnOnly {
            if a.nat_matrix {
                return Err(err(
                    "nat-matrix",
                    "compares ICE candidate types and needs --mode ice",
                ));
            }
            if a.policy == Policy::All {
                // Relay is all turn-only does; say so only if it could surprise.
                if a.nat.is_some() {
                    notes.push(
                        "turn-only mode: every client is relayed (--policy does not apply)".into(),
                    );
                }
            }
        }
        if matches!(a.mode, Mode::Churn | Mode::Idle) && nat != NatSpec::None {
            return Err(err(
                "nat",
                "churn and idle clients have sockets of their own, without NATs",
            ));
        }
        if (nat != NatSpec::None || a.nat_matrix) && !server.ip().is_loopback() {
            return Err(err(
                "nat",
                "emulated NATs have loopback public addresses (127.x.y.z), so the server must be on loopback too",
            ));
        }
        if a.nat_matrix && nat != NatSpec::None {
            notes.push(
                "--nat-matrix places every pair itself: --nat only sets the mapping timeout".into(),
            );
        }
        let tls = match (a.transport, &a.tls_ca) {
            (Transport::Tls, Some(ca)) => {
                // The host part of --server, without the port (and IPv6 brackets).
                let host = a
                    .server
                    .rsplit_once(':')
                    .map_or(a.server.as_str(), |(h, _)| h);
                let name = a
                    .tls_name
                    .clone()
                    .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
                Some(TlsSetup::from_ca_file(ca, &name).map_err(|e| err("tls-ca", e))?)
            }
            (Transport::Tls, None) => {
                return Err(err("tls-ca", "required with --transport tls"));
            }
            _ => None,
        };
        if a.transport != Transport::Udp {
            if nat != NatSpec::None {
                return Err(err(
                    "nat",
                    "the NAT emulation is UDP only; it does not apply with --transport tcp|tls",
                ));
            }
            if a.mode != Mode::TurnOnly {
                return Err(err("transport", "tcp and tls are for --mode turn-only"));
            }
        }
        if a.chaos && nat == NatSpec::None && a.mode == Mode::TurnOnly {
            notes.push("--chaos drops NAT mappings, and there are none without --nat".into());
        }
        if let Some(pid) = a.server_pid {
            let path = format!("/proc/{pid}/stat");
            if !std::path::Path::new(&path).exists() {
                return Err(err(
                    "server-pid",
                    format!("no process {pid} ({path} is missing)"),
                ));
            }
        }
        Ok(Config {
            server,
            credentials,
            agents,
            duration: a.duration,
            ramp: a.ramp,
            rate: a.rate,
            size: a.size,
            max_rate: a.max_rate,
            gso_burst: a.gso_burst,
            policy: if a.mode == Mode::TurnOnly {
                Policy::Relay
            } else {
                a.policy
            },
            nat,
            nat_matrix: a.nat_matrix,
            chaos: a.chaos,
            threads,
            server_pid: a.server_pid,
            json: a.json,
            plot: a.plot,
            mode: a.mode,
            setup_timeout: a.setup_timeout,
            consent_timeout: a.consent_timeout,
            backend: a.backend,
            quiet: a.quiet,
            transport: a.transport,
            tls,
            notes,
        })
    }
}

impl Config {
    /// The NAT mapping timeout `--nat` asked for (the default without one): the NAT matrix
    /// uses it for all its NATs.
    pub fn nat_timeout(&self) -> Duration {
        match self.nat {
            NatSpec::Fixed(b) => b.timeout,
            NatSpec::Mix { timeout } => timeout,
            NatSpec::None => crate::nat::DEFAULT_TIMEOUT,
        }
    }
}

fn resolve(s: &str) -> Result<SocketAddr, ConfigError> {
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| err("server", format!("`{s}`: {e} (expected HOST:PORT)")))?;
    let first = addrs
        .next()
        .ok_or_else(|| err("server", format!("`{s}` resolves to no address")))?;
    if first.port() == 0 {
        return Err(err("server", "port 0 is not a server port"));
    }
    Ok(first)
}

// ---------------------------------------------------------------------------------------------
// Open files.

/// Sockets one agent usually holds: its own (direct) or its NAT mappings' public sockets, one
/// per mapping. In ICE mode an endpoint-independent mapping is one socket; an address-dependent
/// one is two (the server's address, which its relayed addresses share, and the peer NAT's); an
/// address- and port-dependent one is four (the server, the peer's server-reflexive and relayed
/// candidates, a peer-reflexive one), and up to eight more while two such NATs with
/// endpoint-independent filtering trade peer-reflexive candidates (the agent stops learning
/// them at eight). `mix` counts the average of the nine behaviours, rounded up. A socket that
/// cannot be opened is not fatal: the mapping is dropped and counted (`nat_full`).
pub fn sockets_per_agent(mode: Mode, nat: &NatSpec) -> u64 {
    match (mode, nat) {
        (_, NatSpec::None) => 1,
        (Mode::TurnOnly | Mode::Churn | Mode::Idle, _) => 1,
        (Mode::Ice, NatSpec::Fixed(b)) => match b.mapping {
            crate::nat::Mapping::EndpointIndependent => 1,
            crate::nat::Mapping::AddressDependent => 2,
            crate::nat::Mapping::AddressAndPortDependent => 4,
        },
        // (3 x 1 + 3 x 2 + 3 x 4) / 9, rounded up.
        (Mode::Ice, NatSpec::Mix { .. }) => 3,
    }
}

/// File descriptors loadgen needs besides the agents': per worker an epoll or io_uring fd,
/// eventfds and the like, plus stdio, the preflight socket and output files.
pub fn fixed_fds(threads: usize) -> u64 {
    64 + 8 * threads as u64
}

/// Raises the open-file limit to the hard limit (as the relay does) and checks that the agents'
/// sockets fit; the error says how many are needed and how to raise the limit.
pub fn check_open_files(c: &Config) -> Result<u64, ConfigError> {
    let limit = uturn::limits::raise_nofile();
    let per_agent = if c.nat_matrix {
        sockets_per_agent(
            c.mode,
            &NatSpec::Mix {
                timeout: c.nat_timeout(),
            },
        )
    } else {
        sockets_per_agent(c.mode, &c.nat)
    };
    let need = c.agents * per_agent + fixed_fds(c.threads);
    if need > limit {
        return Err(err(
            "agents",
            format!(
                "{} agents need about {need} open files but the limit is {limit} (the hard limit); raise it (ulimit -Hn / LimitNOFILE=) or use at most {} agents",
                c.agents,
                limit.saturating_sub(fixed_fds(c.threads)) / per_agent
            ),
        ));
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["loadgen", "--server", "127.0.0.1:3478", "--realm", "r"];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(&argv).map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&["--user", "a:b", "--agents", "10"]).unwrap();
        assert_eq!(c.agents, 10);
        assert_eq!(c.duration, Duration::from_secs(30));
        assert_eq!(c.ramp, Duration::from_secs(5));
        assert_eq!((c.rate, c.size, c.max_rate), (50, 160, false));
        assert_eq!(c.mode, Mode::TurnOnly);
        assert_eq!(c.policy, Policy::Relay);
        assert_eq!(c.nat, NatSpec::None);
        assert!(c.threads >= 1 && c.threads <= 5);
        assert_eq!(c.credentials.username, "a");
        assert_eq!(c.credentials.password, "b");
        assert!(c.notes.is_empty());
    }

    #[test]
    fn every_flag() {
        let c = parse(&[
            "--auth-secret",
            "s3cret",
            "--agents",
            "7",
            "--duration",
            "500ms",
            "--ramp",
            "0",
            "--rate",
            "100",
            "--size",
            "1200",
            "--max-rate",
            "--nat",
            "apdm-apdf:timeout=30s",
            "--chaos",
            "--threads",
            "3",
            "--json",
            "r.json",
            "--plot",
            "r.svg",
            "--setup-timeout",
            "3s",
            "--backend",
            "portable",
            "--quiet",
        ])
        .unwrap();
        assert_eq!(c.agents, 8);
        assert!(
            c.notes.iter().any(|n| n.contains("rounded up to 8")),
            "{:?}",
            c.notes
        );
        assert_eq!(c.duration, Duration::from_millis(500));
        assert_eq!(c.ramp, Duration::ZERO);
        assert!(c.max_rate && c.chaos && c.quiet);
        assert_eq!(c.size, 1200);
        assert_eq!(c.threads, 3);
        assert_eq!(c.setup_timeout, Duration::from_secs(3));
        assert_eq!(c.backend, Backend::Portable);
        assert_eq!(c.nat.to_string(), "apdm-apdf:timeout=30s");
        assert_eq!(c.json.as_deref(), Some(std::path::Path::new("r.json")));
        // REST credentials: expiry:loadgen, and the password the server will derive.
        let (expiry, name) = c.credentials.username.split_once(':').unwrap();
        assert_eq!(name, "loadgen");
        let expiry: u64 = expiry.parse().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(expiry > now + 3000);
        assert_eq!(
            c.credentials.password,
            uturn_proto::turn::auth::rest_password(b"s3cret", &c.credentials.username)
        );
    }

    #[test]
    fn ice_mode_and_the_nat_matrix() {
        let c = parse(&["--user", "a:b", "--mode", "ice", "--nat-matrix"]).unwrap();
        // One pair per case: no NAT, nine on one LAN, 81 apart.
        assert_eq!(c.agents, 2 * 91);
        assert!(c.nat_matrix);
        assert_eq!(c.policy, Policy::All);
        assert_eq!(c.consent_timeout, Duration::from_secs(30));
        assert_eq!(c.nat_timeout(), crate::nat::DEFAULT_TIMEOUT);
        let c = parse(&[
            "--user",
            "a:b",
            "--mode",
            "ice",
            "--nat-matrix",
            "--nat",
            "eim-eif:timeout=40s",
            "--policy",
            "relay",
            "--consent-timeout",
            "6s",
        ])
        .unwrap();
        assert_eq!(c.nat_timeout(), Duration::from_secs(40));
        assert!(c
            .notes
            .iter()
            .any(|n| n.contains("only sets the mapping timeout")));
        assert_eq!(c.policy, Policy::Relay);
        assert_eq!(c.consent_timeout, Duration::from_secs(6));
        // The matrix's NATs have loopback public addresses.
        let argv = [
            "loadgen",
            "--server",
            "192.0.2.1:3478",
            "--allow-remote",
            "--realm",
            "r",
            "--user",
            "a:b",
            "--mode",
            "ice",
            "--nat-matrix",
        ];
        let e = Config::from_args(Args::try_parse_from(argv).unwrap()).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
    }

    #[test]
    fn threads_never_exceed_pairs() {
        let c = parse(&["--user", "a:b", "--agents", "4", "--threads", "16"]).unwrap();
        assert_eq!(c.threads, 2);
    }

    #[test]
    fn clear_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--agents", "2"], "--user"),
            (
                &["--user", "a:b", "--auth-secret", "x", "--agents", "2"],
                "cannot be used with",
            ),
            (
                &["--user", "ab", "--agents", "2"],
                "--user: expected NAME:PASSWORD",
            ),
            (
                &["--user", "a:", "--agents", "2"],
                "--user: expected NAME:PASSWORD",
            ),
            (&["--user", "a:b", "--agents", "1"], "--agents: at least 2"),
            (&["--user", "a:b", "--agents", "2", "--rate", "0"], "--rate"),
            (
                &["--user", "a:b", "--agents", "2", "--size", "10"],
                "--size: 24 to 1400",
            ),
            (
                &["--user", "a:b", "--agents", "2", "--duration", "0"],
                "--duration",
            ),
            (
                &["--user", "a:b", "--agents", "2", "--duration", "soon"],
                "expected a number",
            ),
            (
                &["--user", "a:b", "--agents", "2", "--nat", "cone"],
                "--nat: unknown NAT",
            ),
            (
                &["--user", "a:b", "--agents", "2", "--threads", "0"],
                "--threads",
            ),
            (&["--user", "a:b", "--nat-matrix"], "--mode ice"),
            (
                &[
                    "--user",
                    "a:b",
                    "--agents",
                    "2",
                    "--nat-matrix",
                    "--mode",
                    "ice",
                ],
                "leave --agents out",
            ),
            (
                &[
                    "--user",
                    "a:b",
                    "--agents",
                    "2",
                    "--consent-timeout",
                    "500ms",
                ],
                "--consent-timeout: at least 1s",
            ),
            (
                &[
                    "--user",
                    "a:b",
                    "--agents",
                    "2",
                    "--server-pid",
                    "4294967295",
                ],
                "no process",
            ),
        ];
        for (argv, want) in cases {
            let e = parse(argv).unwrap_err();
            assert!(e.contains(want), "{argv:?}: {e}");
        }
    }

    #[test]
    fn remote_servers_need_allow_remote() {
        let argv = |server: &'static str, allow: bool| {
            let mut v = vec![
                "loadgen", "--server", server, "--realm", "r", "--user", "a:b", "--agents", "2",
            ];
            if allow {
                v.push("--allow-remote");
            }
            Config::from_args(Args::try_parse_from(v).unwrap())
        };
        let e = argv("192.0.2.1:3478", false).unwrap_err().to_string();
        assert!(e.contains("--allow-remote"), "{e}");
        assert!(argv("192.0.2.1:3478", true).is_ok());
        assert!(argv("[::1]:3478", false).is_ok());
        assert!(argv("localhost:3478", false).is_ok());
        let e = argv("127.0.0.1:0", false).unwrap_err().to_string();
        assert!(e.contains("port 0"), "{e}");
        let e = argv("no-port", false).unwrap_err().to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn open_file_check_says_how_many_fit() {
        let mut c = parse(&["--user", "a:b", "--agents", "2"]).unwrap();
        assert!(check_open_files(&c).is_ok());
        c.agents = MAX_AGENTS * 1_000_000;
        let e = check_open_files(&c).unwrap_err().to_string();
        assert!(e.contains("open files but the limit is"), "{e}");
        assert!(e.contains("use at most"), "{e}");
        c.mode = Mode::Ice;
        c.nat = "mix".parse().unwrap();
        assert_eq!(sockets_per_agent(c.mode, &c.nat), 3);
        let per = |s: &str| sockets_per_agent(Mode::Ice, &s.parse().unwrap());
        assert_eq!(
            (per("eim-apdf"), per("adm-eif"), per("symmetric")),
            (1, 2, 4)
        );
        assert_eq!(per("none"), 1);
        assert_eq!(
            sockets_per_agent(Mode::TurnOnly, &"symmetric".parse().unwrap()),
            1
        );
    }
}
