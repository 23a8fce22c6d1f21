//! The TURN server (RFC 8656, with the STUN server side of RFC 8489) as a sans-IO state machine.
//!
//! One [`Server`] per worker core owns that core's allocations, relay ports and timers. The
//! driver hands it `(now, five-tuple, bytes)` and gets back at most one [`Transmit`] per input:
//! a response written into the caller's output buffer, or a forward of (part of) the input
//! buffer itself, so relayed payloads are never copied. Relay sockets are opened and closed
//! through the [`RelaySockets`] trait during request handling, because whether a bind succeeds
//! decides the response (508 when ports or descriptors run out).

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

pub use config::ServerConfig;
pub use relay::{OpenError, RelayId, RelaySockets};
pub use server::Server;
pub use stats::{DropReason, Stats};

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
