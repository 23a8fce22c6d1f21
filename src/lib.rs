//! The uturn relay: configuration, per-core workers on the I/O drivers, metrics. The protocol
//! itself lives in the sans-IO `uturn-proto` crate.

pub mod config;
pub mod driver;
pub mod limits;
pub mod metrics;
pub mod stream_conn;
pub mod tls;
pub mod worker;
