//! The project's [`TurnClient`] over a real TCP or TLS connection (RFC 8656 section 3.1), for
//! the process-level tests: the byte stream is cut into messages with the protocol crate's
//! `Framer`, and what the client sends can be cut into pieces of any size, written one by one,
//! so that the server sees messages split across reads. A throwaway certificate for the TLS
//! listener is made here (rcgen).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use uturn_proto::client::{
    Allocation, ClientConfig, Event, Failure, Input, RelayFamily, Transport, TurnClient,
};
use uturn_proto::stream::{Frame, Framer};
use uturn_proto::stun::attr::ConnectionId;
use uturn_proto::stun::Method;

use super::{Received, IO_TIMEOUT};

/// A self-signed certificate for `localhost` and 127.0.0.1, made once per test process.
#[derive(Debug)]
pub struct TestPki {
    pub cert_pem: String,
    pub key_pem: String,
    pub root: CertificateDer<'static>,
}

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("a throwaway certificate");
        TestPki {
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
            root: ck.cert.der().clone(),
        }
    })
}

/// A rustls client configuration that trusts [`pki`] and speaks only `version` (or both).
pub fn tls_client_config(
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().root.clone()).expect("trust the test root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match version {
        Some(v) => vec![v],
        None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// A TCP connection, plain or inside TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Plain(_) => f.write_str("Conn::Plain"),
            Conn::Tls(_) => f.write_str("Conn::Tls"),
        }
    }
}

impl Conn {
    /// Connects to `addr`; with `tls`, completes the handshake (SNI `localhost`).
    pub fn connect(addr: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> Conn {
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to uturn");
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        match tls {
            None => Conn::Plain(tcp),
            Some(cfg) => {
                let name = ServerName::try_from("localhost").expect("name");
                let conn = rustls::ClientConnection::new(cfg, name).expect("TLS client");
                let mut s = rustls::StreamOwned::new(conn, tcp);
                s.sock.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock).expect("TLS handshake");
                }
                Conn::Tls(Box::new(s))
            }
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// The negotiated TLS version.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(s) => s.conn.protocol_version(),
        }
    }

    /// Reads what arrives within `wait`; `Ok(0)` is EOF, `Err(WouldBlock)` nothing yet.
    pub fn read_within(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<usize> {
        self.tcp()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .expect("timeout");
        let r = match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        };
        match r {
            Err(e) if e.kind() == ErrorKind::TimedOut => Err(ErrorKind::WouldBlock.into()),
            r => r,
        }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(bytes),
            Conn::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }

    /// Reads exactly `n` bytes within [`IO_TIMEOUT`].
    pub fn read_exact_within(&mut self, n: usize) -> Vec<u8> {
        let until = Instant::now() + IO_TIMEOUT;
        let mut got = Vec::with_capacity(n);
        let mut buf = vec![0u8; 65536];
        while got.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {} of {n} bytes arrived", got.len());
            match self.read_within(&mut buf[..(n - got.len()).min(65536)], left) {
                Ok(0) => panic!("EOF after {} of {n} bytes", got.len()),
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        got
    }

    /// Whether the server closed the connection within `wait` (EOF or reset), reading and
    /// dropping whatever comes first.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < until {
            match self.read_within(&mut buf, until.saturating_duration_since(Instant::now())) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return true,
            }
        }
        false
    }

    pub fn shutdown(&self) {
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

/// [`TurnClient`] on a [`Conn`]: each call runs the sans-IO loop until the answer it waits
/// for arrives, at most [`IO_TIMEOUT`].
#[derive(Debug)]
pub struct StreamClient {
    pub conn: Conn,
    pub turn: TurnClient,
    framer: Framer,
    events: VecDeque<Event>,
    data: VecDeque<Received>,
    /// Writes are cut into pieces of this many bytes, each written on its own after a short
    /// pause, so that the server gets messages split across reads. `None`: whole.
    pub split: Option<usize>,
}

impl StreamClient {
    /// A client of `server` over TCP (`tls: None`) or TLS.
    pub fn connect(
        server: SocketAddr,
        user: &str,
        password: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> StreamClient {
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let mut cfg = ClientConfig::new(server, user, password);
        cfg.transport = transport;
        let conn = Conn::connect(server, tls);
        let turn = TurnClient::new(cfg, rand::random()).expect("client config");
        StreamClient {
            conn,
            turn,
            framer: Framer::new(),
            events: VecDeque::new(),
            data: VecDeque::new(),
            split: None,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        match self.split {
            None => self.conn.write_all(bytes).expect("write"),
            Some(n) => {
                for piece in bytes.chunks(n.max(1)) {
                    self.conn.write_all(piece).expect("write");
                    // Long enough for the piece to leave on its own on loopback.
                    thread::sleep(Duration::from_micros(300));
                }
            }
        }
    }

    /// Sends what the client has to send, then reads what arrives (at most until `until` or
    /// the client's next timer) and feeds each whole message in.
    fn step(&mut self, until: Instant) {
        let mut out = vec![0u8; 4096];
        while let Some(t) = self.turn.poll_transmit(&mut out) {
            let bytes = out[..t.len].to_vec();
            self.write(&bytes);
        }
        let wake = self.turn.poll_timeout().map_or(until, |t| t.min(until));
        let wait = wake.saturating_duration_since(Instant::now());
        let mut buf = vec![0u8; 65536];
        match self.conn.read_within(&mut buf, wait) {
            Ok(0) => panic!("uturn closed the connection"),
            Ok(n) => self.framer.push(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
        let server = self.turn.config().server;
        while let Some(f) = self.framer.next_frame() {
            let f = f.expect("uturn's stream is well framed");
            let (Frame::Stun(m) | Frame::ChannelData(m)) = f;
            let channel = matches!(f, Frame::ChannelData(_));
            if let Input::Data { peer, payload } = self.turn.handle_input(Instant::now(), server, m)
            {
                self.data.push_back(Received {
                    peer,
                    payload: payload.to_vec(),
                    channel,
                });
            }
            // After a ConnectionBind success the rest of the stream is the peer's.
            while let Some(e) = self.turn.poll_event() {
                self.events.push_back(e);
            }
            if self
                .events
                .iter()
                .any(|e| matches!(e, Event::ConnectionBound { .. }))
            {
                break;
            }
        }
        self.turn.handle_timeout(Instant::now());
        while let Some(e) = self.turn.poll_event() {
            self.events.push_back(e);
        }
    }

    fn wait_for(&mut self, method: Method) -> Event {
        let until = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(i) = self
                .events
                .iter()
                .position(|e| super::event_method(e) == method)
            {
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

    /// The next event of any kind other than those already waited for (ConnectionAttempt).
    pub fn wait_event(&mut self, method: Method) -> Event {
        self.wait_for(method)
    }

    pub fn allocate(&mut self, family: RelayFamily) -> Result<Allocation, Failure> {
        self.turn
            .allocate(Instant::now(), family)
            .expect("allocate");
        self.allocated()
    }

    /// An RFC 6062 TCP allocation.
    pub fn allocate_tcp(&mut self, family: RelayFamily) -> Result<Allocation, Failure> {
        self.turn
            .allocate_tcp(Instant::now(), family)
            .expect("allocate_tcp");
        self.allocated()
    }

    fn allocated(&mut self) -> Result<Allocation, Failure> {
        match self.wait_for(Method::ALLOCATE) {
            Event::Allocated(a) => Ok(a),
            Event::Failed { failure, .. } => Err(failure),
            e => panic!("unexpected {e:?}"),
        }
    }

    pub fn create_permission(&mut self, peers: &[std::net::IpAddr]) -> Result<(), Failure> {
        self.turn
            .create_permission(Instant::now(), peers)
            .expect("create_permission");
        match self.wait_for(Method::CREATE_PERMISSION) {
            Event::PermissionCreated { .. } => Ok(()),
            Event::Failed { failure, .. } => Err(failure),
            e => panic!("unexpected {e:?}"),
        }
    }

    pub fn channel_bind(&mut self, peer: SocketAddr) -> Result<(), Failure> {
        self.turn
            .channel_bind(Instant::now(), peer)
            .expect("channel_bind");
        match self.wait_for(Method::CHANNEL_BIND) {
            Event::ChannelBound { .. } => Ok(()),
            Event::Failed { failure, .. } => Err(failure),
            e => panic!("unexpected {e:?}"),
        }
    }

    pub fn refresh(&mut self, lifetime: Option<Duration>) -> Result<Event, Failure> {
        self.turn
            .refresh(Instant::now(), lifetime)
            .expect("refresh");
        match self.wait_for(Method::REFRESH) {
            Event::Failed { failure, .. } => Err(failure),
            e => Ok(e),
        }
    }

    /// RFC 6062 Connect: the CONNECTION-ID of the new peer connection.
    pub fn connect_peer(&mut self, peer: SocketAddr) -> Result<ConnectionId, Failure> {
        self.turn.connect(Instant::now(), peer).expect("connect");
        match self.wait_for(Method::CONNECT) {
            Event::Connected { id, .. } => Ok(id),
            Event::Failed { failure, .. } => Err(failure),
            e => panic!("unexpected {e:?}"),
        }
    }

    /// RFC 6062 ConnectionBind on this (fresh) connection; on success, the connection and the
    /// bytes of the peer that came with the response.
    pub fn connection_bind(mut self, id: ConnectionId) -> Result<(Conn, Vec<u8>), Failure> {
        self.turn
            .connection_bind(Instant::now(), id)
            .expect("connection_bind");
        match self.wait_for(Method::CONNECTION_BIND) {
            Event::ConnectionBound { .. } => Ok((self.conn, self.framer.take_rest())),
            Event::Failed { failure, .. } => Err(failure),
            e => panic!("unexpected {e:?}"),
        }
    }

    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) {
        let mut out = vec![0u8; payload.len() + 100];
        let t = self
            .turn
            .send_indication(peer, payload, &mut out)
            .expect("encode Send");
        let bytes = out[..t.len].to_vec();
        self.write(&bytes);
    }

    pub fn channel_data(&mut self, peer: SocketAddr, payload: &[u8]) {
        let mut out = vec![0u8; payload.len() + 8];
        let t = self
            .turn
            .channel_data(peer, payload, &mut out)
            .expect("encode ChannelData");
        let bytes = out[..t.len].to_vec();
        self.write(&bytes);
    }

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
