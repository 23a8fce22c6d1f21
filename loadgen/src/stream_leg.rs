//! `--transport tcp|tls`: the client-to-server leg of each agent's TURN client over its own TCP
//! connection (RFC 8656 section 3.1), with TLS (rustls) on top for `tls`. The relayed leg stays
//! UDP: what the agents measure is the relay with stream clients, as browsers behind UDP-hostile
//! firewalls use it.
//!
//! [`StreamLeg`] owns one connection per agent on the worker's driver ([`NetIo`]'s stream half):
//! it queues the client's messages (the driver writes them once the connection is up), turns
//! the bytes that come back into whole messages with the protocol crate's `Framer`, and hands
//! them to the scenario as if they were datagrams from the server. NAT emulation does not apply
//! (it is a UDP model), so agents on a stream leg are direct.
//!
//! [`preflight`] is the stream version of [`crate::preflight`]: Binding, Allocate and
//! CreatePermission over one blocking connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use uturn::driver::{StreamEvent, StreamId};
use uturn_proto::client::{ClientConfig, Event, Failure, RelayFamily, TurnClient};
use uturn_proto::stream::{Frame, Framer};
use uturn_proto::stun::Method;

use crate::fabric::{AgentIx, NetIo};
use crate::preflight::{Preflight, PreflightError, PREFLIGHT_RETRANSMIT};
use crate::turn_only::{failure_text, Credentials};

/// `--transport`: how agents reach the TURN server.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// UDP datagrams (through the NAT emulation when `--nat` is given).
    #[default]
    Udp,
    /// One TCP connection per agent.
    Tcp,
    /// One TLS connection per agent (TLS 1.2 or 1.3), trusting `--tls-ca`.
    Tls,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The client's view of it.
    pub fn client(self) -> uturn_proto::client::Transport {
        match self {
            Transport::Udp => uturn_proto::client::Transport::Udp,
            Transport::Tcp => uturn_proto::client::Transport::Tcp,
            Transport::Tls => uturn_proto::client::Transport::Tls,
        }
    }
}

/// What a TLS leg trusts and the name it checks.
#[derive(Clone, Debug)]
pub struct TlsSetup {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl TlsSetup {
    /// Trusts the certificates in the PEM file `ca` and checks the server's certificate for
    /// `name` (a DNS name or an IP address).
    pub fn from_ca_file(ca: &std::path::Path, name: &str) -> Result<TlsSetup, String> {
        use rustls::pki_types::pem::PemObject;
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no certificate", ca.display()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in certs {
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("`{name}` is no server name: {e}"))?;
        Ok(TlsSetup {
            config: Arc::new(config),
            name,
        })
    }
}

/// One agent's connection.
#[derive(Debug)]
struct Conn {
    agent: AgentIx,
    tls: Option<Box<rustls::ClientConnection>>,
    framer: Framer,
    /// TLS records the driver's queue had no room for: written first, on `Writable`. A part
    /// of a record must never be dropped, or the stream is corrupt from there on.
    backlog: Vec<u8>,
}

/// Every stream connection of one worker's agents. See the [module documentation](self).
#[derive(Debug)]
pub struct StreamLeg {
    server: SocketAddr,
    tls: Option<TlsSetup>,
    conns: HashMap<StreamId, Conn>,
    by_agent: HashMap<AgentIx, StreamId>,
    /// TLS records to write, reused.
    scratch: Vec<u8>,
    /// Whole messages from the last event, for [`StreamLeg::take_inbox`].
    inbox: Vec<u8>,
    marks: Vec<(AgentIx, usize, usize)>,
}

/// What an event meant for the agents.
#[derive(Debug)]
pub enum LegEvent {
    /// Nothing the scenario must act on; messages may be waiting in the inbox.
    Quiet,
    /// This agent's connection failed or was closed by the server.
    Lost(AgentIx, String),
}

impl StreamLeg {
    pub fn new(server: SocketAddr, tls: Option<TlsSetup>) -> Self {
        StreamLeg {
            server,
            tls,
            conns: HashMap::new(),
            by_agent: HashMap::new(),
            scratch: Vec::new(),
            inbox: Vec::new(),
            marks: Vec::new(),
        }
    }

    /// Opens `agent`'s connection to the server; messages may be sent at once.
    pub fn open(&mut self, agent: AgentIx, io: &mut dyn NetIo) -> io::Result<()> {
        let tls = match &self.tls {
            Some(t) => Some(Box::new(
                rustls::ClientConnection::new(Arc::clone(&t.config), t.name.clone())
                    .map_err(io::Error::other)?,
            )),
            None => None,
        };
        let id = io.tcp_connect(self.server)?;
        self.conns.insert(
            id,
            Conn {
                agent,
                tls,
                framer: Framer::new(),
                backlog: Vec::new(),
            },
        );
        self.by_agent.insert(agent, id);
        // The ClientHello goes first.
        self.flush_tls(id, io);
        Ok(())
    }

    /// Sends one message of `agent`'s client; false if it could not be queued.
    pub fn send(&mut self, agent: AgentIx, bytes: &[u8], io: &mut dyn NetIo) -> bool {
        let Some(&id) = self.by_agent.get(&agent) else {
            return false;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        // A message goes whole or not at all (then it is lost, as a datagram would be): a
        // part of one would corrupt the stream.
        if !Self::write_backlog(id, c, io) {
            return false;
        }
        match c.tls.as_mut() {
            None => io.stream_room(id) >= bytes.len() && io.stream_send(id, bytes) == bytes.len(),
            Some(tls) => {
                if tls.writer().write_all(bytes).is_err() {
                    return false;
                }
                // Encrypted and queued: what the driver cannot take yet waits in the backlog.
                self.flush_tls(id, io);
                true
            }
        }
    }

    /// Writes what waits in `c`'s backlog; true when nothing is left.
    fn write_backlog(id: StreamId, c: &mut Conn, io: &mut dyn NetIo) -> bool {
        if !c.backlog.is_empty() {
            let n = io.stream_send(id, &c.backlog);
            c.backlog.drain(..n);
        }
        c.backlog.is_empty()
    }

    /// Writes what rustls has for the wire; what the driver cannot take now waits in the
    /// connection's backlog. False if anything waits.
    fn flush_tls(&mut self, id: StreamId, io: &mut dyn NetIo) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return true;
        };
        let Some(tls) = c.tls.as_mut() else {
            return true;
        };
        self.scratch.clear();
        while tls.wants_write() {
            if tls.write_tls(&mut self.scratch).is_err() {
                break;
            }
        }
        if !Self::write_backlog(id, c, io) {
            c.backlog.extend_from_slice(&self.scratch);
            return false;
        }
        let n = if self.scratch.is_empty() {
            0
        } else {
            io.stream_send(id, &self.scratch)
        };
        c.backlog.extend_from_slice(&self.scratch[n..]);
        c.backlog.is_empty()
    }

    /// A driver event on one of the leg's connections. Whole messages go to the inbox.
    pub fn on_stream(&mut self, event: StreamEvent<'_>, io: &mut dyn NetIo) -> LegEvent {
        match event {
            StreamEvent::Connected { conn, error } => {
                let Some(c) = self.conns.get(&conn) else {
                    io.stream_close(conn);
                    return LegEvent::Quiet;
                };
                match error {
                    None => {
                        io.stream_set_reading(conn, true);
                        LegEvent::Quiet
                    }
                    Some(e) => self.lose(conn, c.agent, format!("connect: {e}"), io),
                }
            }
            StreamEvent::Data { conn, bytes } => self.data(conn, bytes, io),
            StreamEvent::Closed { conn, error } => match self.conns.get(&conn) {
                Some(c) => {
                    let why = match error {
                        None => "the server closed the connection".to_string(),
                        Some(e) => format!("connection: {e}"),
                    };
                    self.lose(conn, c.agent, why, io)
                }
                None => {
                    io.stream_close(conn);
                    LegEvent::Quiet
                }
            },
            StreamEvent::Accepted { conn, .. } => {
                io.stream_close(conn);
                LegEvent::Quiet
            }
            StreamEvent::Writable { conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    Self::write_backlog(conn, c, io);
                }
                LegEvent::Quiet
            }
        }
    }

    fn lose(&mut self, id: StreamId, agent: AgentIx, why: String, io: &mut dyn NetIo) -> LegEvent {
        self.conns.remove(&id);
        self.by_agent.remove(&agent);
        io.stream_close(id);
        LegEvent::Lost(agent, why)
    }

    fn data(&mut self, id: StreamId, mut bytes: &[u8], io: &mut dyn NetIo) -> LegEvent {
        let Some(c) = self.conns.get_mut(&id) else {
            return LegEvent::Quiet;
        };
        let agent = c.agent;
        match c.tls.as_mut() {
            None => c.framer.push(bytes),
            Some(tls) => {
                let mut plain = [0u8; 4096];
                while !bytes.is_empty() {
                    match tls.read_tls(&mut bytes) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if let Err(e) = tls.process_new_packets() {
                        return self.lose(id, agent, format!("TLS: {e}"), io);
                    }
                    loop {
                        match tls.reader().read(&mut plain) {
                            Ok(n) if n > 0 => c.framer.push(&plain[..n]),
                            _ => break,
                        }
                    }
                }
            }
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return LegEvent::Quiet;
        };
        while let Some(f) = c.framer.next_frame() {
            match f {
                Ok(Frame::Stun(m) | Frame::ChannelData(m)) => {
                    let at = self.inbox.len();
                    self.inbox.extend_from_slice(m);
                    self.marks.push((agent, at, self.inbox.len()));
                }
                Err(e) => return self.lose(id, agent, format!("framing: {e}"), io),
            }
        }
        // Handshake messages and acknowledgements rustls owes the server.
        self.flush_tls(id, io);
        LegEvent::Quiet
    }

    /// The messages that arrived: one buffer, and `(agent, start, end)` for each message in it;
    /// call [`StreamLeg::give_back`] with the buffers when done.
    pub fn take_inbox(&mut self) -> (Vec<u8>, Vec<(AgentIx, usize, usize)>) {
        (
            std::mem::take(&mut self.inbox),
            std::mem::take(&mut self.marks),
        )
    }

    pub fn give_back(&mut self, mut inbox: Vec<u8>, mut marks: Vec<(AgentIx, usize, usize)>) {
        inbox.clear();
        marks.clear();
        self.inbox = inbox;
        self.marks = marks;
    }

    /// The address messages from the server come from, for the client.
    pub fn server(&self) -> SocketAddr {
        self.server
    }
}

// ---------------------------------------------------------------------------------------------
// Preflight.

/// A blocking connection for the preflight.
enum Blocking {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Blocking {
    fn tcp(&self) -> &TcpStream {
        match self {
            Blocking::Plain(s) => s,
            Blocking::Tls(s) => &s.sock,
        }
    }

    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Blocking::Plain(s) => s.write_all(b),
            Blocking::Tls(s) => {
                s.write_all(b)?;
                s.flush()
            }
        }
    }

    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Blocking::Plain(s) => s.read(b),
            Blocking::Tls(s) => s.read(b),
        }
    }
}

/// [`crate::preflight::run`] over a TCP or TLS connection: the server answers on that
/// transport, the credentials work and the peer policy lets loopback peers through.
pub fn preflight(
    server: SocketAddr,
    creds: &Credentials,
    transport: Transport,
    tls: Option<&TlsSetup>,
) -> Result<Preflight, PreflightError> {
    let other = |what: &'static str, reason: String| PreflightError::Other {
        server,
        what,
        reason,
    };
    let wait = PREFLIGHT_RETRANSMIT.reliable_timeout;
    let tcp = TcpStream::connect_timeout(&server, wait).map_err(|e| {
        other(
            "TCP connect",
            format!("{e}: is the server listening on TCP there?"),
        )
    })?;
    let _ = tcp.set_nodelay(true);
    let mut conn = match tls {
        None => Blocking::Plain(tcp),
        Some(t) => {
            let c = rustls::ClientConnection::new(Arc::clone(&t.config), t.name.clone())
                .map_err(|e| other("TLS set-up", e.to_string()))?;
            let mut s = rustls::StreamOwned::new(c, tcp);
            let _ = s.sock.set_read_timeout(Some(wait));
            while s.conn.is_handshaking() {
                s.conn
                    .complete_io(&mut s.sock)
                    .map_err(|e| other("TLS handshake", e.to_string()))?;
            }
            Blocking::Tls(Box::new(s))
        }
    };
    let mut cfg = ClientConfig::new(server, &creds.username, &creds.password);
    cfg.transport = transport.client();
    cfg.realm = Some(creds.realm.clone());
    cfg.retransmit = PREFLIGHT_RETRANSMIT;
    cfg.software = Some(concat!("uturn-loadgen ", env!("CARGO_PKG_VERSION")).into());
    let mut client =
        TurnClient::new(cfg, rand::random()).map_err(|e| other("client set-up", e.to_string()))?;
    let mut framer = Framer::new();

    let t0 = Instant::now();
    let _ = client.binding(t0);
    let mapped = match until_event(&mut conn, &mut framer, &mut client, server)? {
        Event::BindingSuccess { mapped } => mapped,
        e => return Err(other("STUN Binding", event_text(e))),
    };
    let binding_rtt = t0.elapsed();
    let t1 = Instant::now();
    client
        .allocate(t1, RelayFamily::Ipv4)
        .map_err(|e| other("Allocate", e.to_string()))?;
    let relayed = match until_event(&mut conn, &mut framer, &mut client, server)? {
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
        e => return Err(other("Allocate", event_text(e))),
    };
    let allocate = t1.elapsed();
    client
        .create_permission(Instant::now(), &[relayed.ip()])
        .map_err(|e| other("CreatePermission", e.to_string()))?;
    let outcome = until_event(&mut conn, &mut framer, &mut client, server)?;
    if client.deallocate(Instant::now()).is_ok() {
        let _ = until_event(&mut conn, &mut framer, &mut client, server);
    }
    match outcome {
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
            peer: relayed,
            reason: failure_text(failure),
        }),
        e => Err(other("CreatePermission", event_text(e))),
    }
}

fn event_text(e: Event) -> String {
    match e {
        Event::Failed { failure, .. } => failure_text(failure),
        other => format!("unexpected {other:?}"),
    }
}

/// Drives the client until it reports an event (its transaction timeout bounds the wait).
fn until_event(
    conn: &mut Blocking,
    framer: &mut Framer,
    client: &mut TurnClient,
    server: SocketAddr,
) -> Result<Event, PreflightError> {
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some(t) = client.poll_transmit(&mut buf) {
            conn.write_all(&buf[..t.len])
                .map_err(|e| PreflightError::Other {
                    server,
                    what: "write",
                    reason: e.to_string(),
                })?;
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
        let _ = conn.tcp().set_read_timeout(Some(wait));
        match conn.read(&mut buf) {
            Ok(0) => {
                return Err(PreflightError::Other {
                    server,
                    what: "read",
                    reason: "the server closed the connection".into(),
                })
            }
            Ok(n) => framer.push(&buf[..n]),
            // A timeout: the client's timers decide.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                return Err(PreflightError::Other {
                    server,
                    what: "read",
                    reason: e.to_string(),
                })
            }
        }
        while let Some(f) = framer.next_frame() {
            let (Ok(Frame::Stun(m)) | Ok(Frame::ChannelData(m))) = f else {
                return Err(PreflightError::Other {
                    server,
                    what: "framing",
                    reason: "the server's byte stream is not STUN".into(),
                });
            };
            client.handle_input(Instant::now(), server, m);
        }
        client.handle_timeout(Instant::now());
    }
}
