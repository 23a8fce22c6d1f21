//! loadgen: thousands of TURN clients or ICE agents against any TURN server.
pub mod duration;
pub mod nat;
