//! Candidate pairs and their states (RFC 8445 section 6.1.2).

use uturn_proto::stun::TransactionId;

/// RFC 8445 section 6.1.2.6, without Frozen: this agent runs one data stream, so every pair is
/// unfrozen from the start (the frozen algorithm only orders checks across streams sharing
/// foundations).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

/// A local and a remote candidate, by index into the agent's tables.
#[derive(Clone, Debug)]
pub(crate) struct Pair {
    pub local: u16,
    pub remote: u16,
    pub priority: u64,
    pub state: PairState,
    /// The connectivity check in flight for this pair, to cancel it when a triggered check or
    /// the end of checking makes it moot (RFC 8445 section 7.3.1.4).
    pub in_flight: Option<TransactionId>,
    /// The local candidate of the valid pair this pair's success produced (RFC 8445 section
    /// 7.2.5.3.2): the pair's own local candidate, or a peer-reflexive one when the peer saw the
    /// check come from another address. Data still leaves by the pair's base.
    pub valid_local: u16,
    /// The peer sent USE-CANDIDATE on this pair (RFC 8445 section 7.3.1.5): as the controlled
    /// agent, select it once it has succeeded.
    pub remote_nominated: bool,
}

impl Pair {
    pub fn new(local: u16, remote: u16, priority: u64) -> Self {
        Pair {
            local,
            remote,
            priority,
            state: PairState::Waiting,
            in_flight: None,
            valid_local: local,
            remote_nominated: false,
        }
    }
}
