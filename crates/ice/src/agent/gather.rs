//! Gathering (RFC 8445 section 5.1.1): host candidates from the embedder's sockets,
//! server-reflexive ones from a STUN Binding and relayed ones from a TURN allocation, both
//! through the proto crate's sans-IO [`TurnClient`], one per server per socket.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use uturn_proto::client::{
    ClientConfig, ClientError, Event as ClientEvent, RelayFamily, TurnClient,
};
use uturn_proto::stun::Method;

use super::{
    same_family, Agent, AgentError, Base, Event, Live, Local, Step, Transmit, MAX_BASES, MAX_LOCALS,
};
use crate::candidate::{
    candidate_priority, is_mdns_name, Address, Candidate, CandidateKind, COMPONENT,
};
use crate::config::{Policy, TurnServer};

/// Requests one STUN/TURN client may have outstanding: the allocation's refresh, a channel
/// binding and a permission per remote address, with room to spare.
const CLIENT_TRANSACTIONS: usize = 16;

impl Agent {
    /// Registers a local UDP socket bound to `base`. With `mdns_name` (a `<uuid>.local` name,
    /// see [`Agent::random_mdns_name`]) its host candidate is announced under that name instead
    /// of the address, as browsers do; the embedder's resolver maps the name back for agents on
    /// the same LAN.
    pub fn add_host(
        &mut self,
        base: SocketAddr,
        mdns_name: Option<String>,
    ) -> Result<(), AgentError> {
        if self.gathering != Step::Idle {
            return Err(AgentError::AlreadyGathering);
        }
        if self.bases.iter().any(|b| b.addr == base) {
            return Err(AgentError::DuplicateBase);
        }
        if self.bases.len() >= MAX_BASES {
            return Err(AgentError::TooManyBases);
        }
        if mdns_name.as_deref().is_some_and(|n| !is_mdns_name(n)) {
            return Err(AgentError::MdnsName);
        }
        let stun = match self.config.stun_server {
            Some(server)
                if same_family(&server, &base)
                    && self.config.turn.as_ref().is_none_or(|t| t.server != server) =>
            {
                let c = ClientConfig::new(server, "", "");
                Some(Box::new(TurnClient::new(c, self.rng.seed())?))
            }
            _ => None,
        };
        let turn = match &self.config.turn {
            Some(t) if same_family(&t.server, &base) => {
                Some(Box::new(turn_client(t, self.rng.seed())?))
            }
            _ => None,
        };
        self.bases.push(Base {
            addr: base,
            mdns: mdns_name,
            local_pref: u16::MAX - self.bases.len() as u16,
            stun,
            turn,
            srflx: Step::Idle,
            relay: Step::Idle,
        });
        Ok(())
    }

    /// Starts gathering on every socket added: host candidates are announced at once,
    /// server-reflexive and relayed ones when their servers answer. [`Event::GatheringDone`]
    /// follows the last.
    pub fn gather(&mut self, now: Instant) {
        self.now = Some(now);
        if self.gathering != Step::Idle {
            return;
        }
        if self.state == super::State::New {
            self.state = super::State::Checking;
        }
        self.gathering = Step::Pending;
        for b in 0..self.bases.len() {
            if self.config.policy == Policy::All {
                let addr = self.bases[b].addr;
                self.add_local(b, CandidateKind::Host, addr, None, None);
            }
            self.start_srflx(now, b);
            self.start_relay(now, b, false);
        }
        self.check_gathering_done();
    }

    /// Gathering again after a restart; see [`Agent::restart`].
    pub(super) fn regather(&mut self, now: Instant) {
        // Server-reflexive and peer-reflexive candidates go: the first are gathered again, the
        // second were learned from checks of the old session. Dead relays go too. Nothing refers
        // to local candidates by index any more (pairs and checks are gone), so the table can be
        // compacted.
        self.locals.retain(|l| match l.kind {
            CandidateKind::Host => true,
            CandidateKind::Relayed => l.live != Live::Dead,
            _ => false,
        });
        self.gathering = Step::Pending;
        for i in 0..self.locals.len() {
            match self.locals[i].kind {
                CandidateKind::Host => self.announce(i),
                _ => self.locals[i].live = Live::Probing,
            }
        }
        for b in 0..self.bases.len() {
            self.start_srflx(now, b);
            self.start_relay(now, b, true);
        }
        self.check_gathering_done();
    }

    fn start_srflx(&mut self, now: Instant, b: usize) {
        let Some(server) = self.config.stun_server else {
            return;
        };
        let base = &mut self.bases[b];
        base.srflx = Step::Idle;
        if self.config.policy != Policy::All || !same_family(&server, &base.addr) {
            return;
        }
        // The STUN server may be the TURN server, whose client then sends the Binding.
        let client = match (base.stun.as_deref_mut(), base.turn.as_deref_mut()) {
            (Some(c), _) => c,
            (None, Some(c)) if c.config().server == server => c,
            _ => return,
        };
        if client.binding(now).is_ok() {
            base.srflx = Step::Pending;
        }
    }

    /// Allocates on the TURN server, or with `probe` first refreshes an allocation that exists
    /// to learn whether the server still has it.
    fn start_relay(&mut self, now: Instant, b: usize, probe: bool) {
        let base = &mut self.bases[b];
        base.relay = Step::Idle;
        let Some(turn) = base.turn.as_deref_mut() else {
            return;
        };
        let started = if probe && turn.allocation().is_some() {
            turn.refresh(now, None).is_ok()
        } else {
            turn.allocate(now, relay_family(&turn.config().server))
                .is_ok()
        };
        if started {
            base.relay = Step::Pending;
        }
    }

    /// The first datagram any STUN/TURN client wants to send.
    pub(super) fn poll_server_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        for b in &mut self.bases {
            for c in [b.stun.as_deref_mut(), b.turn.as_deref_mut()]
                .into_iter()
                .flatten()
            {
                if let Some(t) = c.poll_transmit(buf) {
                    return Some(Transmit {
                        from: b.addr,
                        to: t.to,
                        len: t.len,
                    });
                }
            }
        }
        None
    }

    /// Acts on what the STUN/TURN clients report.
    pub(super) fn drain_server_events(&mut self, now: Instant) {
        for b in 0..self.bases.len() {
            loop {
                let base = &mut self.bases[b];
                let event = match base.stun.as_deref_mut().and_then(|c| c.poll_event()) {
                    Some(e) => e,
                    None => match base.turn.as_deref_mut().and_then(|c| c.poll_event()) {
                        Some(e) => e,
                        None => break,
                    },
                };
                self.on_server_event(now, b, event);
            }
            self.check_relay_alive(b);
        }
        self.check_gathering_done();
    }

    fn on_server_event(&mut self, now: Instant, b: usize, event: ClientEvent) {
        match event {
            ClientEvent::BindingSuccess { mapped } => {
                self.bases[b].srflx = Step::Done;
                self.add_srflx(b, mapped, self.config.stun_server.map(|s| s.ip()));
            }
            ClientEvent::Allocated(a) => {
                self.bases[b].relay = Step::Done;
                let server = self.config.turn.as_ref().map(|t| t.server.ip());
                let relayed =
                    self.add_local(b, CandidateKind::Relayed, a.relayed, a.mapped, server);
                if let Some(l) = relayed {
                    self.form_pairs_for_local(now, l);
                }
                // Without a STUN server the allocation's XOR-MAPPED-ADDRESS is the
                // server-reflexive candidate.
                if let (None, Some(mapped)) = (self.config.stun_server, a.mapped) {
                    self.add_srflx(b, mapped, server);
                }
            }
            ClientEvent::Refreshed { .. } => {
                if self.bases[b].relay == Step::Pending {
                    self.bases[b].relay = Step::Done;
                }
                let probing = self.locals.iter().position(|l| {
                    usize::from(l.base) == b
                        && l.kind == CandidateKind::Relayed
                        && l.live == Live::Probing
                });
                if let Some(l) = probing {
                    self.locals[l].live = Live::Active;
                    self.announce(l);
                    self.form_pairs_for_local(now, l);
                }
            }
            ClientEvent::Failed { method, .. } if method == Method::BINDING => {
                self.bases[b].srflx = Step::Done;
            }
            ClientEvent::Failed { method, .. }
                if method == Method::REFRESH && self.bases[b].relay == Step::Pending =>
            {
                // The restart probe failed: the allocation is gone or the server unreachable.
                // A fresh client forgets the old allocation and its session, then allocates.
                self.kill_relay(b);
                if let Some(t) = &self.config.turn {
                    // The configuration was accepted by `add_host` already.
                    let fresh = turn_client(t, self.rng.seed()).ok().map(Box::new);
                    self.bases[b].turn = fresh;
                }
                self.start_relay(now, b, false);
            }
            ClientEvent::Failed { method, .. } if method == Method::ALLOCATE => {
                self.bases[b].relay = Step::Done;
            }
            ClientEvent::Failed { method, .. } if method == Method::CREATE_PERMISSION => {
                self.fail_pairs_without_permission(now, b);
            }
            _ => {}
        }
    }

    /// A relayed candidate whose allocation the client no longer holds (deleted, or answered
    /// 437) is dead, and so are its pairs.
    fn check_relay_alive(&mut self, b: usize) {
        let has_allocation = self.bases[b]
            .turn
            .as_deref()
            .is_some_and(|t| t.allocation().is_some());
        if !has_allocation {
            self.kill_relay(b);
        }
    }

    fn kill_relay(&mut self, b: usize) {
        for l in 0..self.locals.len() {
            let local = &mut self.locals[l];
            if usize::from(local.base) == b
                && local.kind == CandidateKind::Relayed
                && local.live != Live::Dead
            {
                local.live = Live::Dead;
                self.fail_pairs_of_local(l);
            }
        }
    }

    fn add_srflx(&mut self, b: usize, mapped: SocketAddr, server: Option<IpAddr>) {
        let base = &self.bases[b];
        // RFC 8445 section 5.1.3: a server-reflexive address equal to its base (no NAT) is
        // redundant with the host candidate.
        if self.config.policy != Policy::All
            || mapped == base.addr
            || self
                .locals
                .iter()
                .any(|l| l.kind == CandidateKind::ServerReflexive && l.addr == mapped)
        {
            return;
        }
        // With an mDNS host the base address stays private: browsers send `0.0.0.0 0`.
        let related = if base.mdns.is_some() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        } else {
            base.addr
        };
        self.add_local(
            b,
            CandidateKind::ServerReflexive,
            mapped,
            Some(related),
            server,
        );
    }

    /// Adds and announces a local candidate; `None` when the table is full.
    fn add_local(
        &mut self,
        b: usize,
        kind: CandidateKind,
        addr: SocketAddr,
        related: Option<SocketAddr>,
        server: Option<IpAddr>,
    ) -> Option<usize> {
        if self.locals.len() >= MAX_LOCALS {
            return None;
        }
        let base = &self.bases[b];
        self.locals.push(Local {
            kind,
            addr,
            base: b as u8,
            priority: candidate_priority(kind, base.local_pref, COMPONENT),
            related,
            server,
            live: Live::Active,
        });
        let l = self.locals.len() - 1;
        self.announce(l);
        Some(l)
    }

    /// A local peer-reflexive candidate learned from a check's response (RFC 8445 section
    /// 7.2.5.3.1). Not announced: the peer learns it from the checks themselves.
    pub(super) fn add_local_prflx(
        &mut self,
        of: usize,
        addr: SocketAddr,
        priority: u32,
    ) -> Option<usize> {
        if let Some(l) = self.locals.iter().position(|l| l.addr == addr) {
            return Some(l);
        }
        if self.locals.len() >= MAX_LOCALS {
            return None;
        }
        let base = self.locals[of].base;
        self.locals.push(Local {
            kind: CandidateKind::PeerReflexive,
            addr,
            base,
            priority,
            related: None,
            server: None,
            live: Live::Active,
        });
        self.stats.peer_reflexive += 1;
        Some(self.locals.len() - 1)
    }

    fn announce(&mut self, l: usize) {
        let local = &self.locals[l];
        let base = &self.bases[usize::from(local.base)];
        let address = match (&base.mdns, local.kind) {
            (Some(name), CandidateKind::Host) => Address::Name(name.clone()),
            _ => Address::Ip(local.addr.ip()),
        };
        let candidate = Candidate {
            foundation: foundation(local.kind, base.addr.ip(), local.server),
            component: COMPONENT,
            priority: local.priority,
            address,
            port: local.addr.port(),
            kind: local.kind,
            related: local.related,
        };
        self.emit(Event::LocalCandidate(candidate));
    }

    fn check_gathering_done(&mut self) {
        if self.gathering == Step::Pending
            && self
                .bases
                .iter()
                .all(|b| b.srflx != Step::Pending && b.relay != Step::Pending)
        {
            self.gathering = Step::Done;
            self.emit(Event::GatheringDone);
            self.check_failed();
        }
    }
}

/// A TURN client for `t`, renewing on its own what it holds (RFC 8656 sections 8, 9, 12).
fn turn_client(t: &TurnServer, seed: [u8; 32]) -> Result<TurnClient, ClientError> {
    let mut c = ClientConfig::new(t.server, t.username.clone(), t.password.clone());
    c.max_transactions = CLIENT_TRANSACTIONS;
    TurnClient::new(c, seed)
}

/// The relayed family to ask for: the TURN server's own.
fn relay_family(server: &SocketAddr) -> RelayFamily {
    if server.is_ipv4() {
        RelayFamily::Ipv4
    } else {
        RelayFamily::Ipv6
    }
}

/// RFC 8445 section 5.1.1.3: candidates share a foundation when they have the same type, base
/// IP, server IP and transport. A 32-bit FNV-1a hash of those, in decimal, is a valid
/// `foundation` token that stays the same across restarts and needs no table.
fn foundation(kind: CandidateKind, base: IpAddr, server: Option<IpAddr>) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    eat(kind.sdp_name().as_bytes());
    eat(&ip_bytes(base));
    if let Some(s) = server {
        eat(&ip_bytes(s));
    }
    eat(b"udp");
    h.to_string()
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foundations_follow_rfc8445_5_1_1_3() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s: IpAddr = "203.0.113.1".parse().unwrap();
        let f = foundation(CandidateKind::ServerReflexive, a, Some(s));
        assert_eq!(f, foundation(CandidateKind::ServerReflexive, a, Some(s)));
        assert_ne!(f, foundation(CandidateKind::Relayed, a, Some(s)));
        assert_ne!(f, foundation(CandidateKind::ServerReflexive, b, Some(s)));
        assert_ne!(f, foundation(CandidateKind::ServerReflexive, a, None));
        assert!(crate::sdp::is_ice_chars(&f, 1, 32));
    }
}
