//! The TURN server (RFC 8656) as a sans-IO state machine.

pub mod auth;
pub mod policy;
