//! A small sans-IO STUN/TURN client: transactions with the RFC 8489 retransmission schedule,
//! long-term credentials with 401/438 handling, and a TURN client for one 5-tuple (RFC 8656).
//!
//! It reads no clock, draws no randomness and opens no socket: the caller passes `now` into every
//! call, seeds transaction ids once, and moves the bytes. Nothing is allocated per packet:
//! requests are encoded into the caller's buffer when they are due (again for each
//! retransmission), and received application data is handed back as a slice of the datagram.
//! That keeps a client small enough for a load generator to run thousands in one thread.
//!
//! The loop, as for every sans-IO machine in this crate:
//!
//! ```no_run
//! # use std::time::Instant;
//! # use uturn_proto::client::{ClientConfig, Event, Input, RelayFamily, TurnClient};
//! # fn recv() -> Option<(std::net::SocketAddr, Vec<u8>)> { None }
//! # fn send(_: std::net::SocketAddr, _: &[u8]) {}
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = "192.0.2.1:3478".parse()?;
//! let mut client = TurnClient::new(ClientConfig::new(server, "user", "pass"), [7; 32])?;
//! client.allocate(Instant::now(), RelayFamily::Ipv4)?;
//! let mut buf = [0u8; 1500];
//! loop {
//!     while let Some(t) = client.poll_transmit(&mut buf) {
//!         send(t.to, &buf[..t.len]);
//!     }
//!     // ... wait for a datagram or until client.poll_timeout() ...
//!     let now = Instant::now();
//!     if let Some((from, datagram)) = recv() {
//!         if let Input::Data { peer, payload } = client.handle_input(now, from, &datagram) {
//!             // application data from `peer`
//!         }
//!     }
//!     client.handle_timeout(now);
//!     while let Some(event) = client.poll_event() {
//!         if let Event::Allocated(a) = event { println!("relayed at {}", a.relayed) }
//!     }
//! }
//! # }
//! ```
//!
//! # TCP and TLS to the server, and TCP relaying (RFC 6062)
//!
//! With [`ClientConfig::transport`] set to TCP or TLS, requests are sent once and given up after
//! `Ti` (RFC 8489 section 6.2.2), ChannelData is padded to 4 bytes (RFC 8656 section 12.5), and
//! the caller cuts the received byte stream into messages with [`crate::stream::Framer`] before
//! [`TurnClient::handle_input`]. The TCP relaying of RFC 6062 takes two kinds of client:
//! - the *control* client, on the first connection: [`TurnClient::allocate_tcp`], then
//!   [`TurnClient::connect`] per peer ([`Event::Connected`]) or [`Event::ConnectionAttempt`]
//!   when a peer connects to the relayed address;
//! - one *data* client per peer connection, on a new connection to the same server address with
//!   the same credentials: [`TurnClient::connection_bind`] with the CONNECTION-ID. After
//!   [`Event::ConnectionBound`] the connection carries the peer's bytes as they are, and the
//!   data client is done.
//!
//! Not covered: USERHASH and the nonce cookie's security feature bits (RFC 8489 section 9.2.1;
//! the bid-down check they enable is the server's), the ICMP attribute in Data indications,
//! ADDRESS-ERROR-CODE of half-failed dual allocations, 300 Try Alternate, EVEN-PORT,
//! RESERVATION-TOKEN and DONT-FRAGMENT. Usernames and passwords are used as given, without
//! OpaqueString preparation (see [`crate::stun::integrity`]).

mod auth;
mod peers;
mod tid;
mod transaction;
mod turn;

#[cfg(test)]
mod tests;

pub use auth::{AlgorithmPolicy, AuthError};
pub use peers::PeerList;
pub use tid::TransactionIds;
pub use transaction::{RetransmitPolicy, TableFull, Transactions, Transport};
pub use turn::{
    Allocation, ClientConfig, ClientError, Event, Failure, Ignored, Input, RelayFamily, Transmit,
    TurnClient, CHANNEL_LIFETIME, CHANNEL_REFRESH, PERMISSION_LIFETIME, PERMISSION_REFRESH,
};
