//! The state of RFC 6062 TCP relaying inside one [`super::Server`]: peer data connections, from
//! the Connect request or the accepted connection that made them to the ConnectionBind that
//! splices them with a client data connection, and the messages answered later than the request
//! that caused them (the Connect response, ConnectionAttempt indications).
//!
//! The server only decides. Connections themselves, their bytes and their buffers are the
//! driver's; here each one is a [`ConnectionId`] and a few words of state.

use super::allocation::Millis;
use super::relay::ConnectionId;
use super::response::Signer;
use super::rng::Rng;
use crate::stun::TransactionId;
use ahash::RandomState;
use core::net::SocketAddr;
use std::collections::{HashMap, VecDeque};

/// RFC 6062 sections 5.2 and 5.3: a peer data connection without a ConnectionBind after 30
/// seconds is closed.
pub const BIND_TIMEOUT: Millis = 30_000;

/// RFC 6062 section 5.2: the connect timeout "MUST be at least 30 seconds". The server gives up
/// on a connection attempt after this long even if the driver never reports, so a stalled
/// connect cannot keep a Connect transaction open forever.
pub const MIN_CONNECT_TIMEOUT: Millis = 30_000;

/// Where a peer data connection is in its life.
#[derive(Copy, Clone, Debug)]
pub(crate) enum ConnState {
    /// A Connect request is waiting for the driver's [`super::Server::tcp_connected`]; its
    /// response is signed with the key the request was verified with.
    Connecting {
        tid: TransactionId,
        signer: Signer,
        fingerprint: bool,
        deadline: Millis,
    },
    /// Connected (or accepted) and waiting for the client's ConnectionBind.
    Unbound { deadline: Millis },
    /// Spliced with a client data connection: the driver moves the bytes.
    Bound,
}

/// One peer data connection of a TCP allocation.
#[derive(Copy, Clone, Debug)]
pub(crate) struct PeerConn {
    /// The allocation's slot and generation: a connection never outlives its allocation, but the
    /// pair guards queued messages against a slot reused in between.
    pub slot: usize,
    pub generation: u32,
    pub peer: SocketAddr,
    pub state: ConnState,
}

/// A message decided earlier and written when the driver polls for it.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Deferred {
    /// The Connect response: success with CONNECTION-ID, or 447.
    ConnectResult {
        slot: usize,
        generation: u32,
        tid: TransactionId,
        signer: Signer,
        fingerprint: bool,
        /// `Some` on success.
        conn: Option<ConnectionId>,
    },
    /// RFC 6062 section 5.3: a peer connected to the relayed address.
    ConnectionAttempt {
        slot: usize,
        generation: u32,
        peer: SocketAddr,
        conn: ConnectionId,
    },
}

impl Deferred {
    pub fn allocation(&self) -> (usize, u32) {
        match *self {
            Deferred::ConnectResult {
                slot, generation, ..
            }
            | Deferred::ConnectionAttempt {
                slot, generation, ..
            } => (slot, generation),
        }
    }
}

/// Every peer data connection of one server, and the messages waiting to be written.
#[derive(Debug)]
pub(crate) struct TcpTable {
    pub conns: HashMap<u32, PeerConn, RandomState>,
    pub deferred: VecDeque<Deferred>,
    /// The top byte of every CONNECTION-ID this server hands out.
    worker: u8,
}

impl TcpTable {
    pub fn new(worker: u8) -> Self {
        TcpTable {
            conns: HashMap::with_hasher(RandomState::new()),
            deferred: VecDeque::new(),
            worker,
        }
    }

    /// A fresh CONNECTION-ID: the worker's byte on top of 24 random bits, unique among live
    /// connections and never 0 in its random part (some clients treat 0 as "none"). Random, so
    /// that a client cannot guess another allocation's pending connection; ConnectionBind is
    /// authenticated anyway. `None` after a few collisions: the table is nearly full, and the
    /// request is answered 508 rather than searched for a free id.
    pub fn fresh_id(&self, rng: &mut Rng) -> Option<ConnectionId> {
        (0..16).find_map(|_| {
            let low = (rng.next_u64() as u32) & 0x00FF_FFFF;
            let id = (u32::from(self.worker) << 24) | low;
            (low != 0 && !self.conns.contains_key(&id)).then_some(ConnectionId(id))
        })
    }

    pub fn is_ours(&self, id: ConnectionId) -> bool {
        connection_id_worker(id) == self.worker
    }
}

/// The worker that owns a CONNECTION-ID: a ConnectionBind can arrive on any worker's listening
/// socket (SO_REUSEPORT spreads connections), and the driver moves it to this one.
pub fn connection_id_worker(id: ConnectionId) -> u8 {
    (id.0 >> 24) as u8
}
