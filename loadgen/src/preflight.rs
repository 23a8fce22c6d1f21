//! Before any load: one STUN Binding, one TURN Allocate and one CreatePermission for loopback
//! peers, from a plain UDP socket, with a short retransmission schedule. An unreachable server,
//! bad credentials or a peer policy that refuses the test's peers is a clear error within
//! seconds instead of thousands of failed agents.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use uturn_proto::client::{
    ClientConfig, Event, Failure, RelayFamily, RetransmitPolicy, TurnClient,
};
use uturn_proto::stun::Method;

use crate::turn_only::{failure_text, Credentials};

/// Sends at 0, 250, 750 ms and gives up at 1.75 s: per step, so the whole preflight against a
/// silent server fails in under two seconds.
pub const PREFLIGHT_RETRANSMIT: RetransmitPolicy = RetransmitPolicy {
    rto: Duration::from_millis(250),
    max_transmits: 3,
    last_wait_factor: 4,
    reliable_timeout: Duration::from_millis(1750),
};

/// What the preflight learnt.
#[derive(Copy, Clone, Debug)]
pub struct Preflight {
    pub binding_rtt: Duration,
    /// Our address as the server saw it.
    pub mapped: SocketAddr,
    /// Allocate sent to allocation granted, 401 round trip included.
    pub allocate: Duration,
    pub relayed: SocketAddr,
}

/// Why the server is not usable. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("cannot open a UDP socket towards {server}: {source}")]
    Socket {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{server} refused the connection (ICMP port unreachable): is the TURN server running and listening on UDP there?")]
    Refused { server: SocketAddr },
    #[error("no answer from {server} to a STUN Binding request within {secs:.1} s: is a STUN/TURN server listening on UDP there, and no firewall in between?")]
    Unreachable { server: SocketAddr, secs: f64 },
    #[error("bad credentials: {server} answered 401 to the authenticated Allocate (user `{user}`, realm `{realm}`)")]
    BadCredentials {
        server: SocketAddr,
        user: String,
        realm: String,
    },
    #[error("{server} refused the Allocate: {reason}")]
    AllocateRefused { server: SocketAddr, reason: String },
    #[error("{server} refuses {peer} as a peer ({reason}); loadgen's peers are loopback addresses: run uturn with --allow-loopback-peers (or allow 127.0.0.0/8 in the server's peer policy)")]
    PeerRefused {
        server: SocketAddr,
        peer: SocketAddr,
        reason: String,
    },
    #[error("{server}: {what} failed: {reason}")]
    Other {
        server: SocketAddr,
        what: &'static str,
        reason: String,
    },
}

/// Runs the preflight against `server`.
pub fn run(server: SocketAddr, creds: &Credentials) -> Result<Preflight, PreflightError> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock_err = |source| PreflightError::Socket { server, source };
    let sock = UdpSocket::bind(local).map_err(sock_err)?;
    // Connected, so that an ICMP port unreachable comes back as ECONNREFUSED at once.
    sock.connect(server).map_err(sock_err)?;
    let mut cfg = ClientConfig::new(server, &creds.username, &creds.password);
    cfg.realm = Some(creds.realm.clone());
    cfg.retransmit = PREFLIGHT_RETRANSMIT;
    cfg.software = Some(concat!("uturn-loadgen ", env!("CARGO_PKG_VERSION")).into());
    let mut client = TurnClient::new(cfg, rand::random()).map_err(|e| PreflightError::Other {
        server,
        what: "client set-up",
        reason: e.to_string(),
    })?;
    let mut io = Exchange {
        sock,
        server,
        buf: [0; 2048],
    };

    let t0 = Instant::now();
    let _ = client.binding(t0);
    let mapped = match io.until_event(&mut client)? {
        Event::BindingSuccess { mapped } => mapped,
        Event::Failed {
            failure: Failure::Timeout,
            ..
        } => {
            return Err(PreflightError::Unreachable {
                server,
                secs: t0.elapsed().as_secs_f64(),
            })
        }
        other => return Err(other_failure(server, "STUN Binding", other)),
    };
    let binding_rtt = t0.elapsed();

    let t1 = Instant::now();
    client
        .allocate(t1, RelayFamily::Ipv4)
        .map_err(|e| PreflightError::Other {
            server,
            what: "Allocate",
            reason: e.to_string(),
        })?;
    let relayed = match io.until_event(&mut client)? {
        Event::Allocated(a) => a.relayed,
        Event::Failed {
            failure: Failure::Error(401 | 441),
            ..
        } => {
            return Err(PreflightError::BadCredentials {
                server,
                user: creds.username.clone(),
                realm: creds.realm.clone(),
            })
        }
        Event::Failed { failure, .. } => {
            return Err(PreflightError::AllocateRefused {
                server,
                reason: failure_text(failure),
            })
        }
        other => return Err(other_failure(server, "Allocate", other)),
    };
    let allocate = t1.elapsed();

    // The load's peers are other clients' relayed addresses, on the relay's own address: check
    // that the server's peer policy lets them through.
    let peer = relayed;
    let outcome = match client.create_permission(Instant::now(), &[peer.ip()]) {
        Ok(()) => io.until_event(&mut client),
        Err(e) => Err(PreflightError::Other {
            server,
            what: "CreatePermission",
            reason: e.to_string(),
        }),
    };
    // Release the allocation whatever happened; its failure is not the server's problem.
    if client.deallocate(Instant::now()).is_ok() {
        let _ = io.until_event(&mut client);
    }
    match outcome? {
        Event::PermissionCreated { .. } => Ok(Preflight {
            binding_rtt,
            mapped,
            allocate,
            relayed,
        }),
        Event::Failed {
            method: Method::CREATE_PERMISSION,
            failure,
        } => Err(PreflightError::PeerRefused {
            server,
            peer,
            reason: failure_text(failure),
        }),
        other => Err(other_failure(server, "CreatePermission", other)),
    }
}

fn other_failure(server: SocketAddr, what: &'static str, e: Event) -> PreflightError {
    let reason = match e {
        Event::Failed { failure, .. } => failure_text(failure),
        other => format!("unexpected {other:?}"),
    };
    PreflightError::Other {
        server,
        what,
        reason,
    }
}

struct Exchange {
    sock: UdpSocket,
    server: SocketAddr,
    buf: [u8; 2048],
}

impl Exchange {
    /// Drives the client until it reports an event; every request it sends is bounded by its
    /// retransmission schedule, so this ends.
    fn until_event(&mut self, client: &mut TurnClient) -> Result<Event, PreflightError> {
        let server = self.server;
        loop {
            while let Some(t) = client.poll_transmit(&mut self.buf) {
                match self.sock.send(&self.buf[..t.len]) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        return Err(PreflightError::Refused { server })
                    }
                    // A lost datagram: the retransmission schedule covers it.
                    Err(_) => {}
                }
            }
            if let Some(e) = client.poll_event() {
                return Ok(e);
            }
            let now = Instant::now();
            let wait = client
                .poll_timeout()
                .map_or(Duration::from_millis(100), |t| {
                    t.saturating_duration_since(now)
                })
                .max(Duration::from_millis(1));
            let _ = self.sock.set_read_timeout(Some(wait));
            match self.sock.recv(&mut self.buf) {
                Ok(n) => {
                    client.handle_input(Instant::now(), server, &self.buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(PreflightError::Refused { server })
                }
                Err(_) => {} // timeout or interrupted: the client's timers decide
            }
            client.handle_timeout(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            username: "u".into(),
            password: "p".into(),
            realm: "r".into(),
        }
    }

    #[test]
    fn nothing_listening_fails_fast_and_clearly() {
        // A port just freed: nothing listens, the kernel answers ICMP port unreachable.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server: SocketAddr = ([127, 0, 0, 1], port).into();
        let t = Instant::now();
        let e = run(server, &creds()).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(
            matches!(
                e,
                PreflightError::Refused { .. } | PreflightError::Unreachable { .. }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&server.to_string()), "{e}");
    }

    #[test]
    fn a_silent_server_times_out_within_seconds() {
        // A socket that reads nothing: no ICMP, no answer.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = silent.local_addr().unwrap();
        let t = Instant::now();
        let e = run(server, &creds()).unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, PreflightError::Unreachable { .. }), "{e}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert!(e.to_string().contains("no answer"), "{e}");
    }
}
