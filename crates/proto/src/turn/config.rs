//! What a [`super::Server`] needs to know; built by the relay binary from its own config.

use super::auth::{Credentials, NonceKey};
use super::policy::PeerPolicy;
use core::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Settings of one server instance (one worker).
#[derive(Debug)]
pub struct ServerConfig {
    /// REALM (RFC 8489 section 14.9).
    pub realm: String,
    /// Static users and REST secrets.
    pub credentials: Credentials,
    /// Key for stateless nonces; the same on every worker so a nonce from one is valid on all.
    pub nonce_key: NonceKey,
    /// How long a nonce stays valid before a request gets 438.
    pub nonce_validity: Duration,
    /// Relay addresses: at most one IPv4 and one IPv6.
    pub relay_v4: Option<IpAddr>,
    pub relay_v6: Option<IpAddr>,
    /// This worker's slice of the relay port range, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    /// RFC 8656 section 7.2: default 600 s, and the server's maximum (3600 s by default).
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    /// Permission and channel lifetimes (RFC 8656 sections 9 and 12): 300 s and 600 s.
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    /// Quotas (486 and 508).
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    /// Relay sockets this server may hold open: its share of the process's file descriptors,
    /// minus a reserve for listeners, metrics and logs. Past it, Allocate gets 508 before the
    /// kernel would refuse the socket, so the rest of the process never starves.
    pub max_relay_sockets: usize,
    /// Optional bandwidth cap per allocation in bytes per second (both directions together).
    pub bandwidth_limit: Option<u64>,
    /// Which peers may be relayed to.
    pub peer_policy: PeerPolicy,
    /// SOFTWARE in responses (off by default: it tells attackers what to exploit).
    pub software: Option<String>,
    /// MAPPED-ADDRESS in Binding responses besides XOR-MAPPED-ADDRESS (off by default: larger
    /// responses, more reflection gain).
    pub mapped_address: bool,
    /// RFC 5780 NAT behaviour discovery: off by default, because answering from other
    /// addresses and to other ports raises the reflection gain an attacker can get.
    pub nat_discovery: Option<NatDiscovery>,
    /// RFC 6062 TCP relaying: how long a Connect may take before it is answered 447 (at least
    /// 30 s, which the server enforces), and how many peer data connections one allocation may
    /// have at once (more Connects are answered 508, more accepted connections are closed).
    pub tcp_connect_timeout: Duration,
    pub max_tcp_connections_per_allocation: usize,
    /// This worker's index, the top byte of every CONNECTION-ID it hands out, so that a
    /// ConnectionBind arriving at another worker can be moved to this one.
    pub worker: u8,
    /// How many workers there are: a ConnectionBind whose CONNECTION-ID names a worker at or
    /// past this number is forged or stale, and is answered 400 here rather than handed off.
    pub workers: u16,
    /// Seed for port choice and reservation tokens; the driver seeds it from the OS.
    pub seed: u64,
}

impl ServerConfig {
    /// Defaults per RFC 8656 with the given realm, credentials and nonce key; relay addresses and
    /// ports still have to be set.
    pub fn new(realm: impl Into<String>, credentials: Credentials, nonce_key: NonceKey) -> Self {
        ServerConfig {
            realm: realm.into(),
            credentials,
            nonce_key,
            nonce_validity: Duration::from_secs(600),
            relay_v4: None,
            relay_v6: None,
            port_min: 49152,
            port_max: 65535,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            max_allocations: 1_000_000,
            max_allocations_per_user: 100_000,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            max_relay_sockets: usize::MAX,
            bandwidth_limit: None,
            peer_policy: PeerPolicy::new(&super::policy::PeerPolicyConfig::default()),
            software: None,
            mapped_address: false,
            nat_discovery: None,
            tcp_connect_timeout: Duration::from_secs(30),
            max_tcp_connections_per_allocation: 64,
            worker: 0,
            workers: 256,
            seed: 0x5eed,
        }
    }
}

/// The listening sockets of one worker for RFC 5780: a primary and an alternate IP address,
/// each with a primary and an alternate port, so that CHANGE-REQUEST can be answered from the
/// socket with the other IP, the other port, or both.
#[derive(Debug, Clone, Default)]
pub struct NatDiscovery {
    /// Every listening socket: the driver's token and its address.
    pub listeners: Vec<(u32, SocketAddr)>,
}

impl NatDiscovery {
    /// The socket that differs from `from` in IP (if `change_ip`) and port (if `change_port`)
    /// and otherwise matches it, in the same address family.
    pub fn alternate(
        &self,
        from: SocketAddr,
        change_ip: bool,
        change_port: bool,
    ) -> Option<(u32, SocketAddr)> {
        self.listeners.iter().copied().find(|(_, a)| {
            a.is_ipv4() == from.is_ipv4()
                && (a.ip() != from.ip()) == change_ip
                && (a.port() != from.port()) == change_port
        })
    }
}
