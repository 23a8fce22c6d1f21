//! A sans-IO ICE agent (RFC 8445) for the uturn load generator, built on the STUN codec and the
//! sans-IO TURN client of `uturn-proto`.
//!
//! An [`Agent`] gathers host, server-reflexive and relayed candidates, exchanges them as
//! `a=candidate` lines ([`Candidate::to_sdp_line`], [`Candidate::parse`]), checks pairs paced by
//! Ta with short-term credentials, resolves role conflicts, learns peer-reflexive candidates,
//! nominates (regular nomination), keeps consent (RFC 7675) and restarts. It reads no clock,
//! opens no socket and draws all its randomness from a seed, so thousands of agents run in one
//! thread and a run replays exactly. Nothing is allocated per packet: checks and answers are
//! written into the caller's buffer (through a stack buffer when relayed), and received data is
//! returned as a slice of the datagram.
//!
//! Simplifications, each deliberate for a single-stream load generator:
//! - one component (RTP/RTCP multiplexed), UDP only, one data stream: no frozen pairs;
//! - regular nomination only (RFC 8445 deprecates aggressive nomination); the controlled agent
//!   keeps the first pair it selected, so if every copy of a nomination check's response is
//!   lost the two sides may send on different (working) pairs;
//! - a check already In-Progress is not cancelled by a triggered one (section 7.3.1.4), which
//!   avoids two agents cancelling each other's checks under latency;
//! - checks from a relayed candidate carry the relayed type preference in PRIORITY rather than
//!   the peer-reflexive one, so that relay paths never outrank direct ones at the peer;
//! - invalid check requests are dropped silently instead of answered 400/401, so a forged
//!   request makes the agent send nothing;
//! - the retransmission timeout of checks is a fixed 500 ms ([`CHECK_RETRANSMIT`]), which is
//!   what RFC 8445 section 14.3's `MAX(500 ms, Ta * N)` gives for up to ten pairs;
//! - tables are bounded ([`agent::MAX_PAIRS`] and friends) rather than pruned to 100 pairs.

pub mod agent;
pub mod candidate;
pub mod config;
pub mod credentials;
mod message;
mod pair;
mod random;
pub mod sdp;

pub use agent::{
    Agent, AgentError, Event, Ignored, Input, SelectedPair, SendError, State, Stats, Transmit,
};
pub use candidate::{candidate_priority, pair_priority, Address, Candidate, CandidateKind};
pub use config::{AgentConfig, ConfigError, Policy, TurnServer, CHECK_RETRANSMIT};
pub use credentials::{Credentials, CredentialsError};
pub use message::{BadRequest, BadResponse};
pub use sdp::SdpError;
