//! What an [`crate::Agent`] is configured with.

use core::fmt;
use core::net::SocketAddr;
use core::str::FromStr;
use core::time::Duration;

use uturn_proto::client::RetransmitPolicy;

use crate::credentials::Credentials;

/// Which local candidates the agent uses, like `RTCConfiguration.iceTransportPolicy`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Host, server-reflexive and relayed candidates.
    #[default]
    All,
    /// Relayed candidates only: nothing but the TURN allocation is announced or checked from,
    /// so the peer never learns a local or NAT address.
    RelayOnly,
}

/// `--policy` was neither `all` nor `relay`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}: expected \"all\" or \"relay\"")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Policy::All),
            "relay" => Ok(Policy::RelayOnly),
            _ => Err(UnknownPolicy(s.to_string())),
        }
    }
}

/// A TURN server and the long-term credentials for it.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnServer {
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"..")
            .finish()
    }
}

/// The retransmission schedule of connectivity checks. RFC 8445 section 14.3 sets
/// `RTO = MAX(500 ms, Ta * N)` with N the pairs Waiting or In-Progress; with the default Ta of
/// 50 ms that is 500 ms for up to ten pairs, which is what an agent pair of the load generator
/// has. Five transmissions (0, 0.5, 1.5, 3.5 and 7.5 s) and a last wait of 2 s give a pair up
/// after 9.5 s, rather than the 39.5 s of a plain STUN transaction.
pub const CHECK_RETRANSMIT: RetransmitPolicy = RetransmitPolicy {
    rto: Duration::from_millis(500),
    max_transmits: 5,
    last_wait_factor: 4,
    reliable_timeout: Duration::from_millis(39_500),
};

/// Settings of one agent. [`AgentConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The initial role (RFC 8445 section 6.1.1); a role conflict may swap it.
    pub controlling: bool,
    /// The tie-breaker for role conflicts (RFC 8445 section 7.3.1.1); drawn from `seed` when
    /// `None`.
    pub tie_breaker: Option<u64>,
    /// The local ufrag and password; drawn from `seed` when `None`.
    pub credentials: Option<Credentials>,
    /// Every random choice the agent makes comes from this seed, so a run can be replayed.
    /// Take it from the OS outside tests: it keys passwords and transaction ids.
    pub seed: [u8; 32],
    pub policy: Policy,
    /// Ta, the pacing of checks (RFC 8445 section 14.2): one new check per Ta at most.
    pub ta: Duration,
    pub check_retransmit: RetransmitPolicy,
    /// A STUN server for server-reflexive candidates (Binding, RFC 8489 section 3).
    pub stun_server: Option<SocketAddr>,
    /// A TURN server for relayed candidates (Allocate, RFC 8656 section 7).
    pub turn: Option<TurnServer>,
    /// How long the controlling agent waits, after the first check succeeded, for better pairs
    /// before it nominates the best one anyway (regular nomination, RFC 8445 section 8.1.1). It
    /// nominates sooner once both sides finished gathering and no better pair is left to check.
    pub nomination_delay: Duration,
    /// Consent freshness (RFC 7675 section 5.1): a check on the selected pair every interval,
    /// randomized to 0.8-1.2 times it, and consent is lost after `consent_timeout` without a
    /// response.
    pub consent_interval: Duration,
    pub consent_timeout: Duration,
}

impl AgentConfig {
    /// RFC defaults: Ta 50 ms, consent every 5 s and lost after 30 s, all candidate types, no
    /// servers.
    pub fn new(controlling: bool, seed: [u8; 32]) -> Self {
        AgentConfig {
            controlling,
            tie_breaker: None,
            credentials: None,
            seed,
            policy: Policy::All,
            ta: Duration::from_millis(50),
            check_retransmit: CHECK_RETRANSMIT,
            stun_server: None,
            turn: None,
            nomination_delay: Duration::from_millis(1000),
            consent_interval: Duration::from_secs(5),
            consent_timeout: Duration::from_secs(30),
        }
    }
}

/// A configuration the agent cannot run with.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ConfigError {
    #[error("Ta must be positive")]
    Ta,
    #[error("the consent interval must be positive and shorter than the consent timeout")]
    Consent,
    #[error("relay-only policy without a TURN server")]
    RelayOnlyWithoutTurn,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names() {
        assert_eq!("all".parse(), Ok(Policy::All));
        assert_eq!("relay".parse(), Ok(Policy::RelayOnly));
        assert!("Relay".parse::<Policy>().is_err());
    }

    #[test]
    fn check_schedule() {
        use uturn_proto::client::Transport;
        let ms = Duration::from_millis;
        let sends: Vec<Duration> = CHECK_RETRANSMIT.send_times(Transport::Udp).collect();
        assert_eq!(sends, vec![ms(0), ms(500), ms(1500), ms(3500), ms(7500)]);
        assert_eq!(CHECK_RETRANSMIT.timeout(Transport::Udp), ms(9500));
        let t = TurnServer {
            server: "192.0.2.1:3478".parse().unwrap(),
            username: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{t:?}").contains("secret"));
    }
}
