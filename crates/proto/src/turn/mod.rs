//! The TURN server (RFC 8656, with the STUN server side of RFC 8489) as a sans-IO state machine.
//!
//! One [`Server`] per worker core owns that core's allocations, relay ports and timers. The
//! driver hands it `(now, five-tuple, bytes)` and gets back at most one [`Transmit`] per input:
//! a response written into the caller's output buffer, or a forward of (part of) the input
//! buffer itself, so relayed payloads are never copied. Relay sockets are opened and closed
//! through the [`RelaySockets`] trait during request handling, because whether a bind succeeds
//! decides the response (508 when ports or descriptors run out).
//!
//! # TURN over TCP and TLS (RFC 8656 section 3.1)
//!
//! For a client on a stream the driver owns the connection, TLS included, and cuts the byte
//! stream into messages with [`crate::stream::Framer`]. Each message goes to
//! [`Server::handle_client`] with `listener` = the driver's token for the *connection* and the
//! 5-tuple's transport set to [`Transport::Tcp`] or [`Transport::Tls`]; a [`Transmit`] with
//! [`Via::Listener`] is written to that connection. ChannelData towards the client is padded to
//! 4 bytes on streams (section 12.5) by the server; ChannelData from the client arrives without
//! its padding (the framer drops it). RESPONSE-PORT and CHANGE-REQUEST are refused on streams
//! (400): an answer cannot leave a connection for another address. When a client connection
//! closes, the driver calls [`Server::connection_closed`]: an allocation made on it is deleted.
//!
//! # TCP relaying (RFC 6062)
//!
//! A driver that relays over TCP returns its [`TcpRelays`] from [`RelaySockets::tcp`]; the
//! server then accepts REQUESTED-TRANSPORT TCP over TCP and TLS control connections (over UDP:
//! 400, RFC 6062 section 5.1; without driver support: 442). The conversation, with who calls
//! whom:
//!
//! | event | server call (driver to server) | server orders (to the driver) |
//! | --- | --- | --- |
//! | Allocate, TCP | `handle_client` | [`TcpRelays::listen`] on the relayed address |
//! | Connect | `handle_client` (no transmit yet) | [`TcpRelays::connect`] with a fresh [`ConnectionId`] |
//! | the connect completes or fails | [`Server::tcp_connected`] | Connect response queued: success with CONNECTION-ID, or 447 |
//! | a peer connects to the relayed address | [`Server::tcp_accepted`]: the id, or `None` = close it | ConnectionAttempt queued |
//! | ConnectionBind on a new client connection | `handle_client` (success transmit) | [`TcpRelays::splice`] after that transmit |
//! | ConnectionBind for another worker's id | `handle_client` (no transmit) | [`TcpRelays::hand_off`] to that worker |
//! | a peer data connection (or its splice) closes | [`Server::tcp_closed`] | - |
//! | 30 s without ConnectionBind, connect timeout | [`Server::handle_timeout`] | [`TcpRelays::close_peer`] (and 447 for a Connect) |
//! | the allocation ends | `handle_client` / `handle_timeout` / `connection_closed` | [`TcpRelays::close_listener`], `close_peer` for each connection |
//!
//! Messages the server decides later than the request that caused them (Connect responses,
//! ConnectionAttempt indications) come out of [`Server::poll_transmit`], which the driver
//! drains after every batch, as it drains transmits returned directly. A peer data connection
//! that waits for its ConnectionBind is not read from: the kernel's receive buffer holds what the
//! peer sends meanwhile, which bounds it (RFC 6062 section 5.3 asks for exactly that
//! back-pressure). Once spliced, the bytes of both connections never reach the server.

pub mod allocation;
pub mod auth;
pub mod config;
pub mod policy;
pub mod ports;
pub mod relay;
pub mod response;
pub mod rng;
pub mod server;
pub mod stats;
pub mod tcp;

pub use allocation::RelayTransport;
pub use config::ServerConfig;
pub use relay::{ConnectionId, OpenError, RelayId, RelaySockets, TcpRelays};
pub use server::Server;
pub use stats::{DropReason, Stats};
pub use tcp::connection_id_worker;

use core::net::SocketAddr;
use core::ops::Range;
use std::time::Instant;

/// The time, as the driver read it once for a batch. The monotonic instant drives timers; the
/// Unix time is needed for nonce timestamps and TURN REST credential expiry.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub unix_secs: u64,
}

/// The client-facing transport protocol.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A client's 5-tuple as the server sees it (RFC 8656 section 2): the client's address, the
/// server address it reached and the transport. An allocation is identified by it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Which socket a transmit leaves by.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// The listening socket (or connection) the client's packets arrive on; the value is the
    /// driver's token for it, as passed in with the input.
    Listener(u32),
    /// An allocation's relay socket; the value is the driver's handle from
    /// [`RelaySockets::open`].
    Relay(u32),
}

/// Where the bytes to send are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A range of the input buffer the server was handed (forwarding without a copy).
    Input(Range<usize>),
    /// The first `n` bytes of the output buffer the server was handed.
    Output(usize),
}

/// One datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub via: Via,
    pub to: SocketAddr,
    pub payload: Payload,
}
pub use auth::{
    check_nonce, make_nonce, AuthError, Credentials, CredentialsError, Features, Keys, NonceBuf,
    NonceKey, NonceStatus,
};
pub use policy::{Cidr, CidrError, PeerPolicy, PeerPolicyConfig};
