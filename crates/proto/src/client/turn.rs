//! [`TurnClient`]: one client 5-tuple talking to one TURN server (RFC 8656), sans-IO.
//!
//! The caller owns the socket and the clock. It feeds received datagrams to
//! [`TurnClient::handle_input`], wakes at [`TurnClient::poll_timeout`] to call
//! [`TurnClient::handle_timeout`], drains [`TurnClient::poll_transmit`] into its socket and reads
//! what happened from [`TurnClient::poll_event`]. Application data goes out through
//! [`TurnClient::channel_data`] or [`TurnClient::send_indication`], written straight into the
//! caller's buffer, and comes in as a slice borrowed from the received datagram.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::VecDeque;
use std::time::Instant;

use super::auth::{AlgorithmPolicy, AuthError, Credentials, Session};
use super::peers::{Channels, PeerList, Permissions};
use super::tid::TransactionIds;
use super::transaction::{RetransmitPolicy, Transactions, Transport};
use crate::channel_data::{self, ChannelData, ChannelNumber};
use crate::demux::{classify, PacketKind};
use crate::stun::attr::{
    AdditionalAddressFamily, ConnectionId, Data, ErrorCode, Family, Lifetime, MappedAddress, Realm,
    RequestedAddressFamily, RequestedTransport, Software, Username, XorMappedAddress,
    XorPeerAddress, XorRelayedAddress,
};
use crate::stun::{
    padded, Class, EncodeError, Encoder, Message, MessageType, Method, TransactionId,
};

/// How long a permission lasts (RFC 8656 section 9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts (RFC 8656 section 12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// When the client renews a permission: a minute before it lapses, more than the 39.5 s a
/// request may take with all its retransmissions.
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// When the client renews a channel binding, with the same margin doubled.
pub const CHANNEL_REFRESH: Duration = Duration::from_secs(480);
/// A renewal that finds the transaction table full tries again this much later.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// How many 401/438 challenges one request may answer before it is given up. A server that keeps
/// sending fresh nonces would otherwise keep the client busy forever.
const MAX_CHALLENGES: u8 = 3;

/// Which relayed addresses to ask for (RFC 8656 section 7.2 and RFC 8656 section 18.10-18.11).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum RelayFamily {
    /// One IPv4 relayed address, the default when the request names no family.
    #[default]
    Ipv4,
    /// One IPv6 relayed address: REQUESTED-ADDRESS-FAMILY IPv6.
    Ipv6,
    /// An IPv4 and an IPv6 relayed address: ADDITIONAL-ADDRESS-FAMILY IPv6.
    Dual,
}

/// What the client is configured with. Build it with [`ClientConfig::new`] and adjust the
/// public fields.
#[derive(Clone)]
pub struct ClientConfig {
    /// The TURN server's address; datagrams from anywhere else are ignored.
    pub server: SocketAddr,
    pub transport: Transport,
    pub username: String,
    pub password: String,
    /// The realm the client expects. When set, a challenge naming another realm is refused
    /// instead of answered.
    pub realm: Option<String>,
    /// SOFTWARE to put in every request.
    pub software: Option<String>,
    /// LIFETIME to ask for in Allocate and in automatic Refresh requests; `None` lets the server
    /// choose (10 minutes by default, RFC 8656 section 7.2).
    pub lifetime: Option<Duration>,
    pub algorithms: AlgorithmPolicy,
    /// Renew the allocation, permissions and channel bindings before they expire. Off, the
    /// caller calls [`TurnClient::refresh`], [`TurnClient::create_permission`] and
    /// [`TurnClient::channel_bind`] again itself. A renewal that fails is reported as
    /// [`Event::Failed`] and not tried again: a failed permission or channel is forgotten, and
    /// the allocation is left to the caller to refresh or give up.
    pub auto_refresh: bool,
    pub retransmit: RetransmitPolicy,
    /// The most requests outstanding at once.
    pub max_transactions: usize,
}

impl ClientConfig {
    /// UDP, RFC 8489 timers, either password algorithm, automatic renewal, 8 requests in flight.
    pub fn new(
        server: SocketAddr,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        ClientConfig {
            server,
            transport: Transport::Udp,
            username: username.into(),
            password: password.into(),
            realm: None,
            software: None,
            lifetime: None,
            algorithms: AlgorithmPolicy::Any,
            auto_refresh: true,
            retransmit: RetransmitPolicy::RFC8489,
            max_transactions: 8,
        }
    }
}

impl core::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("password", &"..")
            .field("realm", &self.realm)
            .field("software", &self.software)
            .field("lifetime", &self.lifetime)
            .field("algorithms", &self.algorithms)
            .field("auto_refresh", &self.auto_refresh)
            .field("retransmit", &self.retransmit)
            .field("max_transactions", &self.max_transactions)
            .finish()
    }
}

/// Why an operation was refused. Nothing was sent and nothing changed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ClientError {
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    #[error("no allocation")]
    NotAllocated,
    #[error("an allocation exists or is being requested")]
    AllocationExists,
    #[error("too many requests outstanding")]
    TooManyTransactions,
    #[error("a CreatePermission carries 1 to {} peers", PeerList::CAPACITY)]
    PeerCount,
    #[error("all 4096 channel numbers are in use")]
    NoFreeChannel,
    #[error("no channel is bound to this peer yet")]
    NoChannel,
    #[error("payload longer than a ChannelData message can carry")]
    PayloadTooLarge,
    #[error("TCP relaying (RFC 6062) needs a TCP or TLS connection to the server")]
    NeedsStream,
    #[error("the allocation relays over UDP, not TCP")]
    NotTcpAllocation,
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
}

/// A datagram to send: `buf[..len]` of the buffer passed in, to `to`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Transmit {
    pub to: SocketAddr,
    pub len: usize,
}

/// An allocation the server granted.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Allocation {
    pub relayed: SocketAddr,
    /// The second relayed address of a [`RelayFamily::Dual`] allocation, when granted.
    pub additional_relayed: Option<SocketAddr>,
    /// The client's address as the server saw it (XOR-MAPPED-ADDRESS).
    pub mapped: Option<SocketAddr>,
    pub lifetime: Duration,
    /// Relayed over TCP (RFC 6062): reach peers with [`TurnClient::connect`] and data
    /// connections, not channels or Send indications.
    pub tcp: bool,
}

/// Why a request ended without success.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The server answered with this error code. 437 to anything but Allocate means the
    /// allocation is gone, and the client forgets it.
    Error(u16),
    /// No response before the retransmission schedule ran out.
    Timeout,
    /// The server's challenge could not be answered.
    Auth(AuthError),
    /// A success response lacked what its method requires (XOR-RELAYED-ADDRESS and LIFETIME for
    /// Allocate, a mapped address for Binding, LIFETIME for Refresh).
    BadResponse,
    /// The request did not fit the buffer passed to [`TurnClient::poll_transmit`].
    Encode(EncodeError),
    /// The transaction table was full when a challenge had to be answered.
    Busy,
}

/// What happened, in order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    BindingSuccess {
        mapped: SocketAddr,
    },
    Allocated(Allocation),
    Refreshed {
        lifetime: Duration,
    },
    /// The allocation was deleted: a Refresh with lifetime 0 succeeded, or was answered 437
    /// because it was already gone (RFC 8656 section 8).
    Deallocated,
    PermissionCreated {
        peers: PeerList,
    },
    ChannelBound {
        peer: SocketAddr,
        channel: ChannelNumber,
    },
    /// RFC 6062 section 4.3: the server connected to `peer` from the relayed address. Open a new
    /// connection to the server and call [`TurnClient::connection_bind`] with `id` on it within
    /// 30 seconds.
    Connected {
        peer: SocketAddr,
        id: ConnectionId,
    },
    /// RFC 6062 section 4.4: `peer` connected to the relayed address; bind it as for
    /// [`Event::Connected`] to take it.
    ConnectionAttempt {
        peer: SocketAddr,
        id: ConnectionId,
    },
    /// RFC 6062 section 4.4: this connection is now a data connection to the peer of `id`. Every
    /// byte from here on, both ways, is the peer's stream: stop framing and stop using this
    /// client.
    ConnectionBound {
        id: ConnectionId,
    },
    Failed {
        method: Method,
        failure: Failure,
    },
}

/// What a received datagram was.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input<'a> {
    /// Application data from a peer, from a Data indication or ChannelData, borrowed from the
    /// datagram.
    Data { peer: SocketAddr, payload: &'a [u8] },
    /// A response to one of this client's requests; see [`TurnClient::poll_event`] and
    /// [`TurnClient::poll_transmit`] for what follows from it.
    Handled,
    /// Dropped.
    Ignored(Ignored),
}

/// Why a datagram was dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Not from the configured server.
    NotFromServer,
    /// Neither STUN nor ChannelData.
    NotTurn,
    /// Malformed STUN or ChannelData.
    Malformed,
    /// FINGERPRINT present and wrong.
    BadFingerprint,
    /// A response matching no outstanding request, by transaction id and method.
    UnknownTransaction,
    /// A response to a signed request whose integrity is missing or wrong (RFC 8489 section
    /// 9.2.5: discarded as if never received).
    BadIntegrity,
    /// ChannelData on a number bound to no peer (RFC 8656 section 12.6).
    UnknownChannel,
    /// A Data indication from a peer the client has no permission for (RFC 8656 section 10.4).
    NoPermission,
    /// A request, or an indication other than Data.
    Unexpected,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Request {
    Binding,
    Allocate {
        family: RelayFamily,
        lifetime: Option<u32>,
        /// REQUESTED-TRANSPORT TCP (RFC 6062) rather than UDP.
        tcp: bool,
    },
    Refresh {
        lifetime: Option<u32>,
    },
    CreatePermission(PeerList),
    ChannelBind {
        peer: SocketAddr,
        channel: ChannelNumber,
    },
    Connect {
        peer: SocketAddr,
    },
    ConnectionBind {
        id: ConnectionId,
    },
}

impl Request {
    fn method(&self) -> Method {
        match self {
            Request::Binding => Method::BINDING,
            Request::Allocate { .. } => Method::ALLOCATE,
            Request::Refresh { .. } => Method::REFRESH,
            Request::CreatePermission(_) => Method::CREATE_PERMISSION,
            Request::ChannelBind { .. } => Method::CHANNEL_BIND,
            Request::Connect { .. } => Method::CONNECT,
            Request::ConnectionBind { .. } => Method::CONNECTION_BIND,
        }
    }
}

/// What the transaction table remembers about each request.
#[derive(Copy, Clone, Debug)]
struct Pending {
    request: Request,
    /// Sent with credentials. Fixed when the transaction starts so that every copy of it is the
    /// same kind of message, and so that the response is checked accordingly.
    signed: bool,
    /// Challenges answered so far for this request.
    challenges: u8,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum AllocationState {
    None,
    Requested,
    Active {
        info: Allocation,
        refresh_at: Option<Instant>,
    },
}

/// A sans-IO TURN client for one 5-tuple. See the [module documentation](crate::client).
#[derive(Debug)]
pub struct TurnClient {
    config: ClientConfig,
    ids: TransactionIds,
    transactions: Transactions<Pending>,
    session: Option<Session>,
    allocation: AllocationState,
    permissions: Permissions,
    channels: Channels,
    events: VecDeque<Event>,
}

impl TurnClient {
    /// A client that has sent nothing yet. `seed` makes its transaction ids unpredictable: take
    /// it from the OS (see [`TransactionIds`]).
    pub fn new(config: ClientConfig, seed: [u8; 32]) -> Result<Self, ClientError> {
        if config.username.len() > Username::MAX_LEN {
            return Err(ClientError::Config("username longer than 508 bytes"));
        }
        if config
            .realm
            .as_ref()
            .is_some_and(|r| r.len() > Realm::MAX_LEN)
        {
            return Err(ClientError::Config("realm longer than 762 bytes"));
        }
        if config
            .software
            .as_ref()
            .is_some_and(|s| s.len() > Software::MAX_LEN)
        {
            return Err(ClientError::Config("software longer than 762 bytes"));
        }
        if config.max_transactions == 0 {
            return Err(ClientError::Config("max_transactions is 0"));
        }
        Ok(TurnClient {
            transactions: Transactions::new(
                config.max_transactions,
                config.retransmit,
                config.transport,
            ),
            config,
            ids: TransactionIds::new(seed),
            session: None,
            allocation: AllocationState::None,
            permissions: Permissions::default(),
            channels: Channels::default(),
            events: VecDeque::new(),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The allocation, once granted.
    pub fn allocation(&self) -> Option<&Allocation> {
        match &self.allocation {
            AllocationState::Active { info, .. } => Some(info),
            _ => None,
        }
    }

    /// The channel confirmed for `peer`, for callers that write ChannelData headers in place with
    /// [`channel_data::write_header`].
    pub fn channel(&self, peer: SocketAddr) -> Option<ChannelNumber> {
        self.channels.bound(peer)
    }

    /// Whether a permission for `ip` was requested or installed.
    pub fn has_permission(&self, ip: IpAddr) -> bool {
        self.permissions.contains(ip)
    }

    /// Requests outstanding.
    pub fn outstanding(&self) -> usize {
        self.transactions.len()
    }

    // -----------------------------------------------------------------------------------------
    // Requests.

    /// Sends a Binding request to the server, to learn the mapped address (RFC 8489 section 3).
    pub fn binding(&mut self, now: Instant) -> Result<(), ClientError> {
        self.start(now, Request::Binding, false)
    }

    /// Requests an allocation (RFC 8656 section 7.1). The first one goes without credentials; the
    /// server's 401 is answered automatically.
    pub fn allocate(&mut self, now: Instant, family: RelayFamily) -> Result<(), ClientError> {
        self.request_allocation(now, family, false)
    }

    /// Requests a TCP allocation (RFC 6062 section 4.1): the relayed address is a TCP listening
    /// socket on the server, and peers are reached with [`TurnClient::connect`]. Only over TCP
    /// or TLS (the server answers 400 over UDP).
    pub fn allocate_tcp(&mut self, now: Instant, family: RelayFamily) -> Result<(), ClientError> {
        if !self.config.transport.is_reliable() {
            return Err(ClientError::NeedsStream);
        }
        self.request_allocation(now, family, true)
    }

    fn request_allocation(
        &mut self,
        now: Instant,
        family: RelayFamily,
        tcp: bool,
    ) -> Result<(), ClientError> {
        if self.allocation != AllocationState::None {
            return Err(ClientError::AllocationExists);
        }
        let lifetime = self.config.lifetime.map(secs);
        let request = Request::Allocate {
            family,
            lifetime,
            tcp,
        };
        self.start(now, request, self.signed())?;
        self.allocation = AllocationState::Requested;
        Ok(())
    }

    /// Asks the server to open a TCP connection to `peer` from the relayed address (RFC 6062
    /// section 4.3); [`Event::Connected`] carries the CONNECTION-ID to bind. Needs a TCP
    /// allocation.
    pub fn connect(&mut self, now: Instant, peer: SocketAddr) -> Result<(), ClientError> {
        match self.allocation {
            AllocationState::Active { info, .. } if info.tcp => {}
            AllocationState::Active { .. } => return Err(ClientError::NotTcpAllocation),
            _ => return Err(ClientError::NotAllocated),
        }
        self.start(now, Request::Connect { peer }, self.signed())
    }

    /// Sends ConnectionBind for `id` (RFC 6062 section 4.4). Call it on a client made for a new
    /// connection to the same server address, with the same credentials, as its first request;
    /// it needs no allocation of its own. [`Event::ConnectionBound`] ends this client's use.
    pub fn connection_bind(&mut self, now: Instant, id: ConnectionId) -> Result<(), ClientError> {
        if !self.config.transport.is_reliable() {
            return Err(ClientError::NeedsStream);
        }
        if self.allocation != AllocationState::None {
            return Err(ClientError::AllocationExists);
        }
        self.start(now, Request::ConnectionBind { id }, self.signed())
    }

    /// Refreshes the allocation (RFC 8656 section 8); `None` lets the server pick the lifetime,
    /// `Some(Duration::ZERO)` deletes the allocation.
    pub fn refresh(&mut self, now: Instant, lifetime: Option<Duration>) -> Result<(), ClientError> {
        self.require_allocation()?;
        let lifetime = lifetime.map(secs);
        self.start(now, Request::Refresh { lifetime }, self.signed())
    }

    /// Deletes the allocation: a Refresh with lifetime 0.
    pub fn deallocate(&mut self, now: Instant) -> Result<(), ClientError> {
        self.refresh(now, Some(Duration::ZERO))
    }

    /// Installs or refreshes permissions for 1 to [`PeerList::CAPACITY`] peer addresses in one
    /// request (RFC 8656 section 9.1). Ports do not matter to permissions.
    pub fn create_permission(&mut self, now: Instant, peers: &[IpAddr]) -> Result<(), ClientError> {
        self.require_allocation()?;
        let list = PeerList::from_slice(peers)
            .filter(|l| !l.is_empty())
            .ok_or(ClientError::PeerCount)?;
        self.start(now, Request::CreatePermission(list), self.signed())?;
        self.permissions.requested(&list);
        Ok(())
    }

    /// Binds a channel to `peer`, or refreshes its binding (RFC 8656 section 12.1), and returns
    /// the channel number. ChannelData can be sent once [`Event::ChannelBound`] arrived.
    pub fn channel_bind(
        &mut self,
        now: Instant,
        peer: SocketAddr,
    ) -> Result<ChannelNumber, ClientError> {
        self.require_allocation()?;
        if self.transactions.is_full() {
            return Err(ClientError::TooManyTransactions);
        }
        let channel = self
            .channels
            .requested(peer)
            .ok_or(ClientError::NoFreeChannel)?;
        self.start(now, Request::ChannelBind { peer, channel }, self.signed())?;
        Ok(channel)
    }

    fn signed(&self) -> bool {
        self.session.is_some()
    }

    fn require_allocation(&self) -> Result<(), ClientError> {
        match self.allocation {
            AllocationState::Active { .. } => Ok(()),
            _ => Err(ClientError::NotAllocated),
        }
    }

    fn start(&mut self, now: Instant, request: Request, signed: bool) -> Result<(), ClientError> {
        self.start_pending(
            now,
            Pending {
                request,
                signed,
                challenges: 0,
            },
        )
    }

    fn start_pending(&mut self, now: Instant, pending: Pending) -> Result<(), ClientError> {
        if self.transactions.is_full() {
            return Err(ClientError::TooManyTransactions);
        }
        let id = self.ids.next_id();
        self.transactions
            .start(now, id, self.config.server, pending)
            .map_err(|_| ClientError::TooManyTransactions)
    }

    // -----------------------------------------------------------------------------------------
    // Application data.

    /// Writes a ChannelData message for `peer` into `out` (RFC 8656 section 12.4), padded to 4
    /// bytes over TCP and TLS (section 12.5). Needs a confirmed channel.
    pub fn channel_data(
        &self,
        peer: SocketAddr,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Transmit, ClientError> {
        let channel = self.channels.bound(peer).ok_or(ClientError::NoChannel)?;
        let len = u16::try_from(payload.len()).map_err(|_| ClientError::PayloadTooLarge)?;
        let unpadded = channel_data::HEADER_LEN + payload.len();
        let total = if self.config.transport.is_reliable() {
            padded(unpadded)
        } else {
            unpadded
        };
        let (header, body) = out
            .get_mut(..total)
            .and_then(|o| o.split_first_chunk_mut::<{ channel_data::HEADER_LEN }>())
            .ok_or(ClientError::Encode(EncodeError::BufferTooSmall))?;
        channel_data::write_header(header, channel, len);
        let (data, pad) = body.split_at_mut(payload.len());
        data.copy_from_slice(payload);
        pad.fill(0);
        Ok(Transmit {
            to: self.config.server,
            len: total,
        })
    }

    /// Writes a Send indication carrying `payload` to `peer` into `out` (RFC 8656 section 10.1).
    /// The server relays it only if a permission for the peer is installed.
    pub fn send_indication(
        &mut self,
        peer: SocketAddr,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Transmit, ClientError> {
        self.require_allocation()?;
        let mut enc = Encoder::new(
            out,
            MessageType::new(Method::SEND, Class::Indication),
            self.ids.next_id(),
        )?;
        enc.add(&XorPeerAddress(peer))?;
        enc.add(&Data(payload))?;
        enc.fingerprint()?;
        Ok(Transmit {
            to: self.config.server,
            len: enc.finish(),
        })
    }

    /// ChannelData when a channel to `peer` is confirmed, a Send indication otherwise.
    pub fn send(
        &mut self,
        peer: SocketAddr,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Transmit, ClientError> {
        if self.channels.bound(peer).is_some() {
            self.channel_data(peer, payload, out)
        } else {
            self.send_indication(peer, payload, out)
        }
    }

    // -----------------------------------------------------------------------------------------
    // The sans-IO loop.

    /// The next request to send, first copy or retransmission, written into `buf`; a buffer of
    /// 1500 bytes holds any request this client makes with credentials of ordinary size. A
    /// request that does not fit fails with [`Failure::Encode`] rather than blocking the others.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let (id, to, pending) = self.transactions.poll_transmit()?;
            let session = if pending.signed {
                self.session.as_ref()
            } else {
                None
            };
            match encode_request(&self.config, session, &pending.request, id, buf) {
                Ok(len) => return Some(Transmit { to, len }),
                Err(e) => {
                    if let Some(p) = self.transactions.remove(&id) {
                        self.fail(p.request, Failure::Encode(e));
                    }
                }
            }
        }
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`TurnClient::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocation = match self.allocation {
            AllocationState::Active { refresh_at, .. } => refresh_at,
            _ => None,
        };
        [
            self.transactions.poll_timeout(),
            allocation,
            self.permissions.next_refresh(),
            self.channels.next_refresh(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Retransmits, gives up on requests whose schedule ran out, and starts due renewals.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.transactions.handle_timeout(now);
        while let Some((_, p)) = self.transactions.pop_expired(now) {
            self.fail(p.request, Failure::Timeout);
        }
        if self.config.auto_refresh {
            self.start_renewals(now);
        }
    }

    fn start_renewals(&mut self, now: Instant) {
        let later = now + BUSY_RETRY;
        if let AllocationState::Active {
            refresh_at: Some(t),
            ..
        } = self.allocation
        {
            if t <= now {
                let lifetime = self.config.lifetime.map(secs);
                // Renewed again only once this one succeeds.
                let next = match self.start(now, Request::Refresh { lifetime }, self.signed()) {
                    Ok(()) => None,
                    Err(_) => Some(later),
                };
                if let AllocationState::Active { refresh_at, .. } = &mut self.allocation {
                    *refresh_at = next;
                }
            }
        }
        while self.permissions.next_refresh().is_some_and(|t| t <= now) {
            if self.transactions.is_full() {
                self.permissions.postpone(now, later);
                break;
            }
            let due = self.permissions.take_due(now);
            if self
                .start(now, Request::CreatePermission(due), self.signed())
                .is_err()
            {
                self.permissions.confirmed(due.as_slice(), Some(later));
                break;
            }
        }
        while self.channels.next_refresh().is_some_and(|t| t <= now) {
            if self.transactions.is_full() {
                self.channels.postpone(now, later);
                break;
            }
            let Some((peer, channel)) = self.channels.take_due(now) else {
                break;
            };
            if self
                .start(now, Request::ChannelBind { peer, channel }, self.signed())
                .is_err()
            {
                self.channels.confirmed(peer, channel, Some(later));
                break;
            }
        }
    }

    /// Takes in one datagram received on the client's socket (over TCP or TLS: one framed STUN or
    /// ChannelData message).
    pub fn handle_input<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &'a [u8],
    ) -> Input<'a> {
        if from != self.config.server {
            return Input::Ignored(Ignored::NotFromServer);
        }
        match classify(data) {
            PacketKind::ChannelData => self.on_channel_data(data),
            PacketKind::Other => Input::Ignored(Ignored::NotTurn),
            PacketKind::Stun => {
                let Ok(msg) = Message::parse(data) else {
                    return Input::Ignored(Ignored::Malformed);
                };
                if msg.has_fingerprint() && msg.check_fingerprint().is_err() {
                    return Input::Ignored(Ignored::BadFingerprint);
                }
                match msg.class() {
                    Class::Success | Class::Error => self.on_response(now, &msg),
                    Class::Indication => self.on_indication(&msg),
                    Class::Request => Input::Ignored(Ignored::Unexpected),
                }
            }
        }
    }

    fn on_channel_data<'a>(&self, data: &'a [u8]) -> Input<'a> {
        let Ok(cd) = ChannelData::parse(data) else {
            return Input::Ignored(Ignored::Malformed);
        };
        let Some(peer) = self.channels.peer(cd.channel) else {
            return Input::Ignored(Ignored::UnknownChannel);
        };
        match data.get(cd.payload_range()) {
            Some(payload) => Input::Data { peer, payload },
            None => Input::Ignored(Ignored::Malformed),
        }
    }

    /// RFC 8656 section 10.4: a Data indication needs XOR-PEER-ADDRESS and DATA, and should come
    /// from a peer the client gave permission to.
    fn on_indication<'a>(&mut self, msg: &Message<'a>) -> Input<'a> {
        if msg.method() == Method::CONNECTION_ATTEMPT {
            return self.on_connection_attempt(msg);
        }
        if msg.method() != Method::DATA {
            return Input::Ignored(Ignored::Unexpected);
        }
        let (Ok(Some(XorPeerAddress(peer))), Ok(Some(Data(payload)))) =
            (msg.get::<XorPeerAddress>(), msg.get::<Data<'a>>())
        else {
            return Input::Ignored(Ignored::Malformed);
        };
        if !self.permissions.contains(peer.ip()) && !self.channels.has_ip(peer.ip()) {
            return Input::Ignored(Ignored::NoPermission);
        }
        Input::Data { peer, payload }
    }

    /// RFC 6062 section 4.4: a peer connected to the relayed address of a TCP allocation.
    fn on_connection_attempt<'a>(&mut self, msg: &Message<'a>) -> Input<'a> {
        if !self.allocation().is_some_and(|a| a.tcp) {
            return Input::Ignored(Ignored::Unexpected);
        }
        let (Ok(Some(XorPeerAddress(peer))), Ok(Some(id))) =
            (msg.get::<XorPeerAddress>(), msg.get::<ConnectionId>())
        else {
            return Input::Ignored(Ignored::Malformed);
        };
        self.events.push_back(Event::ConnectionAttempt { peer, id });
        Input::Handled
    }

    fn on_response<'a>(&mut self, now: Instant, msg: &Message<'_>) -> Input<'a> {
        let id = msg.transaction_id();
        let Some(&pending) = self.transactions.get(&id) else {
            return Input::Ignored(Ignored::UnknownTransaction);
        };
        if pending.request.method() != msg.method() {
            return Input::Ignored(Ignored::UnknownTransaction);
        }
        let code = match msg.class() {
            Class::Error => match msg.get::<ErrorCode<'_>>() {
                Ok(Some(e)) => Some(e.code),
                _ => return Input::Ignored(Ignored::Malformed),
            },
            _ => None,
        };
        // RFC 8489 section 9.2.5: a response to a signed request must be signed with the same
        // key, or it is discarded as if never received; otherwise anyone who can guess a
        // transaction id could, say, fail a Refresh. The exceptions are the errors a server
        // sends before or without checking credentials: 400, 401, 420 and 438.
        let exempt = matches!(code, Some(400 | 401 | 420 | 438));
        if pending.signed && !exempt && !self.session.as_ref().is_some_and(|s| s.verify(msg)) {
            return Input::Ignored(Ignored::BadIntegrity);
        }
        self.transactions.remove(&id);
        match code {
            None => self.on_success(now, pending.request, msg),
            Some(c @ (401 | 438)) => self.on_challenge(now, pending, msg, c),
            Some(c) => self.fail(pending.request, Failure::Error(c)),
        }
        Input::Handled
    }

    /// Answers 401 Unauthenticated and 438 Stale Nonce by sending the request again, as a new
    /// transaction, with the realm and nonce just received (RFC 8489 section 9.2.5).
    fn on_challenge(&mut self, now: Instant, pending: Pending, msg: &Message<'_>, code: u16) {
        // A 401 to a request that carried credentials means they were refused: sending the same
        // ones again would only loop.
        if (code == 401 && pending.signed) || pending.challenges >= MAX_CHALLENGES {
            return self.fail(pending.request, Failure::Error(code));
        }
        let creds = Credentials {
            username: &self.config.username,
            password: &self.config.password,
            realm: self.config.realm.as_deref(),
            policy: self.config.algorithms,
        };
        if let Err(e) = Session::accept_challenge(&mut self.session, msg, creds) {
            return self.fail(pending.request, Failure::Auth(e));
        }
        let retry = Pending {
            signed: true,
            challenges: pending.challenges + 1,
            ..pending
        };
        if self.start_pending(now, retry).is_err() {
            self.fail(pending.request, Failure::Busy);
        }
    }

    fn on_success(&mut self, now: Instant, request: Request, msg: &Message<'_>) {
        let auto = |after: Duration| self.config.auto_refresh.then(|| now + after);
        match request {
            Request::Binding => match mapped_address(msg) {
                Some(mapped) => self.events.push_back(Event::BindingSuccess { mapped }),
                None => self.fail(request, Failure::BadResponse),
            },
            Request::Allocate { tcp, .. } => {
                let mut relayed = msg.get_all::<XorRelayedAddress>().filter_map(Result::ok);
                let (Some(first), second) = (relayed.next(), relayed.next()) else {
                    return self.fail(request, Failure::BadResponse);
                };
                let Ok(Some(Lifetime(seconds))) = msg.get::<Lifetime>() else {
                    return self.fail(request, Failure::BadResponse);
                };
                let info = Allocation {
                    relayed: first.0,
                    additional_relayed: second.map(|a| a.0),
                    mapped: mapped_address(msg),
                    lifetime: Duration::from_secs(seconds.into()),
                    tcp,
                };
                self.allocation = AllocationState::Active {
                    info,
                    refresh_at: auto(allocation_refresh_delay(info.lifetime)),
                };
                self.events.push_back(Event::Allocated(info));
            }
            Request::Refresh { lifetime } => {
                let granted = msg.get::<Lifetime>();
                if lifetime == Some(0) || matches!(granted, Ok(Some(Lifetime(0)))) {
                    self.reset();
                    return self.events.push_back(Event::Deallocated);
                }
                let Ok(Some(Lifetime(seconds))) = granted else {
                    return self.fail(request, Failure::BadResponse);
                };
                let lifetime = Duration::from_secs(seconds.into());
                let next = auto(allocation_refresh_delay(lifetime));
                if let AllocationState::Active { info, refresh_at } = &mut self.allocation {
                    info.lifetime = lifetime;
                    *refresh_at = next;
                }
                self.events.push_back(Event::Refreshed { lifetime });
            }
            Request::CreatePermission(peers) => {
                self.permissions
                    .confirmed(peers.as_slice(), auto(PERMISSION_REFRESH));
                self.events.push_back(Event::PermissionCreated { peers });
            }
            Request::ChannelBind { peer, channel } => {
                // A channel binding installs or refreshes a permission for the peer's address
                // too (RFC 8656 section 12.2); that permission lapses sooner, so it gets its own
                // renewal.
                self.channels
                    .confirmed(peer, channel, auto(CHANNEL_REFRESH));
                self.permissions
                    .confirmed(&[peer.ip()], auto(PERMISSION_REFRESH));
                self.events.push_back(Event::ChannelBound { peer, channel });
            }
            Request::Connect { peer } => match msg.get::<ConnectionId>() {
                Ok(Some(id)) => self.events.push_back(Event::Connected { peer, id }),
                _ => self.fail(request, Failure::BadResponse),
            },
            Request::ConnectionBind { id } => {
                self.events.push_back(Event::ConnectionBound { id });
            }
        }
    }

    fn fail(&mut self, request: Request, failure: Failure) {
        // 437 Allocation Mismatch to anything but Allocate: the server has no allocation for this
        // 5-tuple (RFC 8656 section 8), so nothing the client holds is valid any more.
        let gone = failure == Failure::Error(437)
            && !matches!(request, Request::Allocate { .. } | Request::Binding);
        match request {
            Request::Binding => {}
            Request::Allocate { .. } => {
                if self.allocation == AllocationState::Requested {
                    self.allocation = AllocationState::None;
                }
            }
            Request::Refresh { lifetime: Some(0) } if gone => {
                // Asked to delete what is already gone: that is success.
                self.reset();
                return self.events.push_back(Event::Deallocated);
            }
            Request::Refresh { .. } => {}
            Request::CreatePermission(peers) => self.permissions.forget(&peers),
            Request::ChannelBind { peer, channel } => self.channels.forget(peer, channel),
            Request::Connect { .. } | Request::ConnectionBind { .. } => {}
        }
        if gone {
            self.reset();
        }
        self.events.push_back(Event::Failed {
            method: request.method(),
            failure,
        });
    }

    /// Forgets the allocation and everything hanging off it. The realm, nonce and key stay: the
    /// next Allocate can be signed straight away.
    fn reset(&mut self) {
        self.allocation = AllocationState::None;
        self.permissions.clear();
        self.channels.clear();
    }
}

/// XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from servers that predate it (RFC 8489 section 14.1).
fn mapped_address(msg: &Message<'_>) -> Option<SocketAddr> {
    match msg.get::<XorMappedAddress>() {
        Ok(Some(a)) => Some(a.0),
        _ => msg.get::<MappedAddress>().ok().flatten().map(|a| a.0),
    }
}

/// When to renew an allocation: a minute before it expires, which leaves room for the whole
/// 39.5 s retransmission schedule, but not before 80 % of a short lifetime, and never sooner than
/// a second so that a server granting 0 s cannot make the client spin.
fn allocation_refresh_delay(lifetime: Duration) -> Duration {
    lifetime
        .saturating_sub(Duration::from_secs(60))
        .max(lifetime * 4 / 5)
        .max(Duration::from_secs(1))
}

/// Whole seconds, saturating at the 32 bits LIFETIME carries.
fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// Writes one request: its method's attributes, SOFTWARE, credentials when signed, FINGERPRINT.
fn encode_request(
    config: &ClientConfig,
    session: Option<&Session>,
    request: &Request,
    id: TransactionId,
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut enc = Encoder::new(buf, MessageType::new(request.method(), Class::Request), id)?;
    match request {
        Request::Binding => {}
        Request::Allocate {
            family,
            lifetime,
            tcp,
        } => {
            // RFC 8656 section 7.1, or RFC 6062 section 4.1 for a TCP allocation.
            enc.add(if *tcp {
                &RequestedTransport::TCP
            } else {
                &RequestedTransport::UDP
            })?;
            match family {
                RelayFamily::Ipv4 => {}
                RelayFamily::Ipv6 => enc.add(&RequestedAddressFamily(Family::V6))?,
                RelayFamily::Dual => enc.add(&AdditionalAddressFamily(Family::V6))?,
            }
            if let Some(l) = lifetime {
                enc.add(&Lifetime(*l))?;
            }
        }
        Request::Refresh { lifetime } => {
            if let Some(l) = lifetime {
                enc.add(&Lifetime(*l))?;
            }
        }
        Request::CreatePermission(peers) => {
            // RFC 8656 section 9.1: the port of each XOR-PEER-ADDRESS is ignored.
            for ip in peers.as_slice() {
                enc.add(&XorPeerAddress(SocketAddr::new(*ip, 0)))?;
            }
        }
        Request::ChannelBind { peer, channel } => {
            enc.add(channel)?;
            enc.add(&XorPeerAddress(*peer))?;
        }
        Request::Connect { peer } => enc.add(&XorPeerAddress(*peer))?,
        Request::ConnectionBind { id } => enc.add(id)?,
    }
    if let Some(s) = &config.software {
        enc.add(&Software(s))?;
    }
    if let Some(session) = session {
        session.sign(&mut enc, &config.username)?;
    }
    // Every request carries FINGERPRINT so that a server multiplexing STUN with other protocols
    // can tell it apart (RFC 8489 section 7).
    enc.fingerprint()?;
    Ok(enc.finish())
}
