//! The sans-IO protocol core of uturn: a zero-copy STUN codec (RFC 8489), the TURN server
//! state machine (RFC 8656) and a small TURN client.
//!
//! Nothing in this crate opens a socket, reads a clock or spawns a task. Callers pass in the
//! current time and the bytes they received, and get back bytes to send written into buffers they
//! own. That keeps every rule here deterministic, fuzzable and unit-testable.
#![forbid(unsafe_code)]

pub mod channel_data;
pub mod client;
pub mod demux;
pub mod stream;
pub mod stun;
pub mod turn;

pub use channel_data::ChannelNumber;
pub use demux::{classify, PacketKind};
