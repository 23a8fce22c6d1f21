//! loadgen: thousands of TURN clients or ICE agents against any TURN server, behind emulated
//! NATs, measuring setup time, throughput, loss and latency.
//!
//! The binary is a thin shell over [`run::run`]; tests call it directly. Modules:
//! - [`cli`]: flags and their validation; [`duration`]: `30s`-style durations.
//! - [`nat`]: the sans-IO NAT emulator (RFC 4787), emulated LANs, mDNS.
//! - [`fabric`]: agents' sockets, real or behind an emulated NAT.
//! - [`worker`]: one thread per core on the relay's I/O driver, running a [`worker::Scenario`].
//! - [`turn_only`]: the turn-only scenario (TURN clients in relayed pairs).
//! - [`natcheck`]: `loadgen natcheck`, the NAT's mapping and filtering (RFC 5780).
//! - [`ice`]: the ICE scenario (pairs of ICE agents), signalling, the NAT matrix.
//! - [`preflight`]: STUN Binding + TURN Allocate + CreatePermission before the load.
//! - [`stream_leg`]: `--transport tcp|tls`, agents' TURN clients on TCP or TLS connections.
//! - [`stats`], [`report`], [`cpu`]: measurements, the JSON report, the summary, the plot.
//! - [`churn`], [`idle`] on [`alloc_clients`]: the allocation benchmarks (rate, memory).

pub mod alloc_clients;
pub mod churn;
pub mod cli;
pub mod cpu;
pub mod duration;
pub mod fabric;
pub mod ice;
pub mod idle;
pub mod nat;
pub mod natcheck;
pub mod preflight;
pub mod report;
pub mod run;
pub mod stats;
pub mod stream_leg;
pub mod turn_only;
pub mod worker;
