//! Counters owned by one server (one worker). Plain integers: the packet path never touches a
//! shared or atomic counter; the driver copies a snapshot out now and then.

use crate::stun::Method;

/// Why a datagram was dropped without an answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not STUN and not ChannelData, or a STUN message that failed to parse.
    Malformed,
    /// FINGERPRINT present but wrong.
    BadFingerprint,
    /// ChannelData or Send from a 5-tuple with no allocation.
    NoAllocation,
    /// ChannelData on an unbound channel.
    NoChannel,
    /// Peer traffic (either direction) without a permission.
    NoPermission,
    /// Send indication to a peer the policy refuses.
    PeerRefused,
    /// Over the allocation's bandwidth cap.
    Bandwidth,
    /// An indication or response the server does not act on.
    Ignored,
    /// A datagram on a relay socket that was closed.
    StaleRelay,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::BadFingerprint,
        DropReason::NoAllocation,
        DropReason::NoChannel,
        DropReason::NoPermission,
        DropReason::PeerRefused,
        DropReason::Bandwidth,
        DropReason::Ignored,
        DropReason::StaleRelay,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadFingerprint => "bad_fingerprint",
            DropReason::NoAllocation => "no_allocation",
            DropReason::NoChannel => "no_channel",
            DropReason::NoPermission => "no_permission",
            DropReason::PeerRefused => "peer_refused",
            DropReason::Bandwidth => "bandwidth",
            DropReason::Ignored => "ignored",
            DropReason::StaleRelay => "stale_relay",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The methods counted per request, and the results they are counted under.
pub const METHODS: [Method; 7] = [
    Method::BINDING,
    Method::ALLOCATE,
    Method::REFRESH,
    Method::CREATE_PERMISSION,
    Method::CHANNEL_BIND,
    Method::CONNECT,
    Method::CONNECTION_BIND,
];
/// Result labels: "success", then the error codes the server sends, then "other".
pub const RESULTS: [&str; 18] = [
    "success", "300", "400", "401", "403", "420", "437", "438", "440", "441", "442", "443", "446",
    "447", "486", "500", "508", "other",
];

fn method_index(m: Method) -> usize {
    METHODS
        .iter()
        .position(|x| *x == m)
        .unwrap_or(METHODS.len())
}

fn result_index(code: Option<u16>) -> usize {
    // RESULTS[1..17] are these codes, in the same order.
    const CODES: [u16; 16] = [
        300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 446, 447, 486, 500, 508,
    ];
    match code {
        None => 0,
        Some(c) => CODES
            .iter()
            .position(|x| *x == c)
            .map_or(RESULTS.len() - 1, |i| i + 1),
    }
}

/// One worker's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub allocations_active: u64,
    pub allocations_total: u64,
    pub permissions_active: u64,
    pub channels_active: u64,
    /// Client to peer, and peer to client.
    pub packets_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_peer: u64,
    pub bytes_to_client: u64,
    pub auth_failures: u64,
    /// Relay sockets that could not be opened for lack of descriptors or ports (answered 508).
    pub relay_open_failures: u64,
    /// RFC 6062 peer data connections: open now (connecting, waiting for ConnectionBind or
    /// spliced), made since start, and accepted ones closed at once (no permission, refused
    /// peer, quota).
    pub tcp_connections_active: u64,
    pub tcp_connections_total: u64,
    pub tcp_connections_refused: u64,
    /// `requests[method][result]`, indexed by [`METHODS`] (plus one row for others) and
    /// [`RESULTS`].
    pub requests: [[u64; RESULTS.len()]; METHODS.len() + 1],
    pub dropped: [u64; DropReason::ALL.len()],
}

impl Stats {
    pub(crate) fn request(&mut self, m: Method, code: Option<u16>) {
        self.requests[method_index(m)][result_index(code)] += 1;
    }

    pub(crate) fn drop(&mut self, r: DropReason) {
        self.dropped[r.index()] += 1;
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.dropped[r.index()]
    }

    /// Requests of `m` answered with `code` (`None` = success).
    pub fn requests_of(&self, m: Method, code: Option<u16>) -> u64 {
        self.requests[method_index(m)][result_index(code)]
    }

    /// The method label of row `i` of [`Stats::requests`].
    pub fn method_label(i: usize) -> &'static str {
        METHODS.get(i).map_or("other", |m| m.name())
    }

    /// Adds another worker's counters (for totals across workers).
    pub fn add(&mut self, o: &Stats) {
        self.allocations_active += o.allocations_active;
        self.allocations_total += o.allocations_total;
        self.permissions_active += o.permissions_active;
        self.channels_active += o.channels_active;
        self.packets_to_peer += o.packets_to_peer;
        self.packets_to_client += o.packets_to_client;
        self.bytes_to_peer += o.bytes_to_peer;
        self.bytes_to_client += o.bytes_to_client;
        self.auth_failures += o.auth_failures;
        self.relay_open_failures += o.relay_open_failures;
        self.tcp_connections_active += o.tcp_connections_active;
        self.tcp_connections_total += o.tcp_connections_total;
        self.tcp_connections_refused += o.tcp_connections_refused;
        for (a, b) in self.requests.iter_mut().zip(o.requests.iter()) {
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x += y;
            }
        }
        for (x, y) in self.dropped.iter_mut().zip(o.dropped.iter()) {
            *x += y;
        }
    }
}
