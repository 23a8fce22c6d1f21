//! The checklist (RFC 8445 sections 6.1.2 to 8) and consent freshness (RFC 7675): pairs, paced
//! checks, the answers to the peer's checks, role conflicts, peer-reflexive candidates,
//! nomination and selection.

use core::net::SocketAddr;
use std::time::Instant;

use uturn_proto::client::{Ignored as ClientIgnored, Input as ClientInput};
use uturn_proto::demux::{classify, PacketKind};
use uturn_proto::stun::{Class, Message, Method, TransactionId};

use super::{
    jittered, same_family, Agent, Check, CheckKind, Consent, Event, Ignored, Input, Live,
    PendingAnswer, Remote, State, Step, Transmit, MAX_ANSWERS, MAX_PAIRS, MAX_PRFLX_PER_LOCAL,
    MAX_REMOTES,
};
use crate::candidate::{candidate_priority, pair_priority, CandidateKind, COMPONENT};
use crate::config::Policy;
use crate::message::{
    encode_answer, encode_request, validate_request, validate_response, Answer, CheckRequest, Role,
    MAX_CHECK_LEN, ROLE_CONFLICT,
};
use crate::pair::{Pair, PairState};

/// Which local socket path a datagram arrived on.
#[derive(Copy, Clone, Debug)]
enum Path {
    /// Straight to the host socket of base `.0`.
    Direct(usize),
    /// Through the TURN allocation of base `.0`.
    Relayed(usize),
}

impl Agent {
    // -----------------------------------------------------------------------------------------
    // Receiving.

    /// Sorts a datagram out: the TURN server's traffic goes to the TURN client (relayed data
    /// comes back out of it), the STUN server's to the STUN client, the rest is checks or
    /// application data from the peer.
    pub(super) fn demux<'a>(
        &mut self,
        now: Instant,
        b: usize,
        from: SocketAddr,
        data: &'a [u8],
    ) -> Input<'a> {
        let base = &mut self.bases[b];
        let stun_too = base
            .stun
            .as_deref()
            .is_some_and(|c| c.config().server == from);
        if let Some(turn) = base
            .turn
            .as_deref_mut()
            .filter(|c| c.config().server == from)
        {
            match turn.handle_input(now, from, data) {
                ClientInput::Data { peer, payload } => {
                    return self.on_datagram(now, Path::Relayed(b), peer, payload)
                }
                ClientInput::Handled => return Input::Handled,
                // One server may be both: try the STUN client with the response.
                ClientInput::Ignored(ClientIgnored::UnknownTransaction) if stun_too => {}
                ClientInput::Ignored(why) => return Input::Ignored(Ignored::Server(why)),
            }
        }
        if stun_too {
            if let Some(stun) = self.bases[b].stun.as_deref_mut() {
                return match stun.handle_input(now, from, data) {
                    ClientInput::Handled => Input::Handled,
                    ClientInput::Ignored(why) => Input::Ignored(Ignored::Server(why)),
                    // A client that never allocated relays nothing.
                    ClientInput::Data { .. } => Input::Ignored(Ignored::Malformed),
                };
            }
        }
        self.on_datagram(now, Path::Direct(b), from, data)
    }

    fn on_datagram<'a>(
        &mut self,
        now: Instant,
        path: Path,
        from: SocketAddr,
        payload: &'a [u8],
    ) -> Input<'a> {
        // RFC 7983: STUN starts with 0-3 and carries the cookie; DTLS, SRTP and the rest are the
        // application's.
        if classify(payload) != PacketKind::Stun {
            return Input::Data { from, payload };
        }
        let Ok(msg) = Message::parse(payload) else {
            return Input::Ignored(Ignored::Malformed);
        };
        if msg.method() != Method::BINDING {
            return Input::Ignored(Ignored::Malformed);
        }
        let Some(local) = self.local_for(path) else {
            return Input::Ignored(Ignored::NoCandidate);
        };
        match msg.class() {
            Class::Request => self.on_request(now, local, from, &msg),
            Class::Success | Class::Error => self.on_response(now, local, from, &msg),
            Class::Indication => Input::Ignored(Ignored::Keepalive),
        }
    }

    /// The local candidate a path belongs to: the host candidate of the socket, or its live
    /// relayed candidate. Server-reflexive candidates never receive: their base does (RFC 8445
    /// section 7.3).
    fn local_for(&self, path: Path) -> Option<usize> {
        let (b, kind) = match path {
            Path::Direct(b) => (b, CandidateKind::Host),
            Path::Relayed(b) => (b, CandidateKind::Relayed),
        };
        self.locals
            .iter()
            .position(|l| usize::from(l.base) == b && l.kind == kind && l.live == Live::Active)
    }

    /// A check from the peer (RFC 8445 section 7.3).
    fn on_request<'a>(
        &mut self,
        now: Instant,
        local: usize,
        from: SocketAddr,
        msg: &Message<'_>,
    ) -> Input<'a> {
        let req = match validate_request(msg, self.local_creds.ufrag(), self.local_creds.pwd()) {
            Ok(r) => r,
            Err(why) => {
                self.stats.invalid += 1;
                return Input::Ignored(Ignored::BadRequest(why));
            }
        };
        self.stats.checks_received += 1;
        let tid = msg.transaction_id();

        // Section 7.3.1.1: both sides claim the same role; the larger tie-breaker controls.
        let conflict = match req.role {
            Role::Controlling(theirs) if self.controlling => {
                let keep = self.tie_breaker >= theirs;
                if !keep {
                    self.set_role(false);
                }
                keep
            }
            Role::Controlled(theirs) if !self.controlling => {
                let take = self.tie_breaker >= theirs;
                if take {
                    self.set_role(true);
                }
                !take
            }
            _ => false,
        };
        if conflict {
            self.stats.role_conflicts += 1;
            self.queue_answer(tid, local, from, Answer::Error(ROLE_CONFLICT));
            return Input::Handled;
        }

        // Section 7.3.1.2: the answer tells the peer where its check came from.
        self.queue_answer(tid, local, from, Answer::Success { mapped: from });

        // Section 7.3.1.3: a source address the peer never signalled is a peer-reflexive
        // candidate, with the priority the check carries.
        //
        // At most MAX_PRFLX_PER_LOCAL of them per local candidate, though: behind NATs with
        // address- and port-dependent mapping on both sides (and endpoint-independent filtering),
        // every check leaves by a new port, so each triggered check teaches the peer a new
        // candidate whose triggered check teaches this agent another, forever. Such a storm would
        // take every Ta slot (triggered checks go first, section 6.1.4.2), so that the relayed
        // pairs, the only ones that can work there, were never checked, and it would fill the
        // remote table, so that the pair the peer nominates could not be recorded. Past the
        // limit the check is still answered, but teaches nothing.
        let remote = match self.remotes.iter().position(|r| r.addr == from) {
            Some(r) => Some(r),
            None if self.peer_reflexive_on(local) >= MAX_PRFLX_PER_LOCAL => None,
            None => self.add_remote(now, from, req.priority, CandidateKind::PeerReflexive, false),
        };
        let Some(p) = remote.and_then(|r| self.add_pair(now, local, r)) else {
            return Input::Handled;
        };

        // Section 7.3.1.4: a triggered check, so that the path is confirmed in both directions
        // without waiting for its turn. A pair already In-Progress is left alone: its check
        // tests the same path, and cancelling it as the RFC suggests can keep two agents
        // cancelling each other's checks under latency.
        if self.selected.is_none() {
            let pair = &mut self.pairs[p];
            if matches!(pair.state, PairState::Waiting | PairState::Failed) {
                pair.state = PairState::Waiting;
                self.trigger(p);
            }
        }

        // Section 7.3.1.5: the controlling agent nominated this pair.
        if req.use_candidate && !self.controlling {
            self.pairs[p].remote_nominated = true;
            if self.pairs[p].state == PairState::Succeeded && self.selected.is_none() {
                self.select(now, p);
            }
        }
        Input::Handled
    }

    /// Peer-reflexive remote candidates learned from checks that arrived on local candidate
    /// `local` (each is paired with that candidate only, section 7.3.1.3).
    fn peer_reflexive_on(&self, local: usize) -> usize {
        self.pairs
            .iter()
            .filter(|p| {
                usize::from(p.local) == local
                    && self.remotes[usize::from(p.remote)].kind == CandidateKind::PeerReflexive
            })
            .count()
    }

    fn queue_answer(&mut self, tid: TransactionId, local: usize, to: SocketAddr, answer: Answer) {
        if self.answers.len() < MAX_ANSWERS {
            self.answers.push_back(PendingAnswer {
                tid,
                local: local as u16,
                to,
                answer,
            });
        }
    }

    /// A response to one of this agent's checks (RFC 8445 section 7.2.5).
    fn on_response<'a>(
        &mut self,
        now: Instant,
        local: usize,
        from: SocketAddr,
        msg: &Message<'_>,
    ) -> Input<'a> {
        let tid = msg.transaction_id();
        let (Some(&check), Some(creds)) = (self.checks.get(&tid), self.remote_creds.as_ref())
        else {
            return Input::Ignored(Ignored::UnknownTransaction);
        };
        let answer = match validate_response(msg, creds.pwd()) {
            Ok(a) => a,
            Err(why) => {
                // Discarded as if never received: a forged response must not end the check.
                self.stats.invalid += 1;
                return Input::Ignored(Ignored::BadResponse(why));
            }
        };
        self.checks.remove(&tid);
        let p = usize::from(check.pair);
        let Some(pair) = self.pairs.get_mut(p) else {
            return Input::Handled;
        };
        if pair.in_flight == Some(tid) {
            pair.in_flight = None;
        }
        // Section 7.2.5.2.1: the response must come back along the path the request took.
        let remote = self.remotes[usize::from(pair.remote)].addr;
        if from != remote || local != usize::from(pair.local) {
            self.check_failed_on(now, p, check.kind);
            return Input::Handled;
        }
        match answer {
            Answer::Error(ROLE_CONFLICT) => {
                // Section 7.2.5.1: take the other role than the one the request claimed, and
                // check the pair again.
                self.stats.role_conflicts += 1;
                self.set_role(!check.controlling);
                if check.kind != CheckKind::Consent && self.pairs[p].state != PairState::Succeeded {
                    self.pairs[p].state = PairState::Waiting;
                    self.trigger(p);
                }
            }
            Answer::Error(_) => self.check_failed_on(now, p, check.kind),
            Answer::Success { mapped } => self.on_success(now, p, &check, mapped),
        }
        Input::Handled
    }

    /// Section 7.2.5.3: the pair works.
    fn on_success(&mut self, now: Instant, p: usize, check: &Check, mapped: SocketAddr) {
        if check.kind == CheckKind::Consent {
            // RFC 7675 section 5.1: consent is granted for another consent timeout.
            if self.selected == Some(p as u16) {
                if let Some(c) = &mut self.consent {
                    c.deadline = now + self.config.consent_timeout;
                }
            }
            return;
        }
        // Section 7.2.5.3.1: an unknown mapped address is a local peer-reflexive candidate (a
        // NAT between the agents). A relayed candidate is what the peer sees by construction.
        let local = usize::from(self.pairs[p].local);
        let valid = if mapped == self.locals[local].addr
            || self.locals[local].kind == CandidateKind::Relayed
        {
            local
        } else {
            self.add_local_prflx(local, mapped, check.priority)
                .unwrap_or(local)
        };
        let pair = &mut self.pairs[p];
        pair.valid_local = valid as u16;
        pair.state = PairState::Succeeded;
        let remote_nominated = pair.remote_nominated;
        if self.selected.is_some() {
            return;
        }
        if self.controlling {
            if check.kind == CheckKind::Nomination && self.nominating == Some(p as u16) {
                // Section 8.1.1: the nomination check succeeded; the pair is selected.
                self.select(now, p);
            } else if self.nominate_at.is_none() {
                self.nominate_at = Some(now + self.config.nomination_delay);
            }
        } else if remote_nominated {
            // Section 7.3.1.5: nominated earlier, and now valid.
            self.select(now, p);
        }
    }

    /// A check failed: a timeout, an error response, or an asymmetric path.
    fn check_failed_on(&mut self, now: Instant, p: usize, kind: CheckKind) {
        // Lost consent checks are not failures in themselves: the consent deadline decides.
        if kind == CheckKind::Consent {
            return;
        }
        if let Some(pair) = self.pairs.get_mut(p) {
            pair.state = PairState::Failed;
        }
        if self.nominating == Some(p as u16) {
            // Nominate the next best valid pair, without waiting.
            self.nominating = None;
            self.nominate_at = Some(now);
        }
    }

    pub(super) fn on_check_timeout(&mut self, now: Instant, tid: TransactionId, check: &Check) {
        let p = usize::from(check.pair);
        if let Some(pair) = self.pairs.get_mut(p) {
            if pair.in_flight == Some(tid) {
                pair.in_flight = None;
            }
        }
        self.check_failed_on(now, p, check.kind);
    }

    /// Section 7.3.1.1 and 7.2.5.1: a role change reorders the checklist, because pair
    /// priorities depend on which side controls.
    fn set_role(&mut self, controlling: bool) {
        if self.controlling == controlling {
            return;
        }
        self.controlling = controlling;
        self.nominating = None;
        self.nominate_at = None;
        for i in 0..self.pairs.len() {
            let (l, r) = (self.pairs[i].local, self.pairs[i].remote);
            self.pairs[i].priority = self.pair_priority_of(usize::from(l), usize::from(r));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Candidates and pairs.

    /// Adds a remote candidate, or updates the type of a known address (a candidate signalled
    /// after it was learned as peer-reflexive keeps its pairs). With `pair_all`, pairs it with
    /// every local candidate (RFC 8445 section 6.1.2.2); a peer-reflexive one is paired only
    /// with the candidate its check arrived on (section 7.3.1.3).
    pub(super) fn add_remote(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        priority: u32,
        kind: CandidateKind,
        pair_all: bool,
    ) -> Option<usize> {
        let r = match self.remotes.iter().position(|r| r.addr == addr) {
            Some(r) => {
                if self.remotes[r].kind == CandidateKind::PeerReflexive {
                    self.remotes[r].kind = kind;
                }
                r
            }
            None => {
                if self.remotes.len() >= MAX_REMOTES {
                    return None;
                }
                if kind == CandidateKind::PeerReflexive {
                    self.stats.peer_reflexive += 1;
                }
                self.remotes.push(Remote {
                    addr,
                    priority,
                    kind,
                });
                self.remotes.len() - 1
            }
        };
        if pair_all {
            for l in 0..self.locals.len() {
                self.add_pair(now, l, r);
            }
        }
        Some(r)
    }

    /// Pairs a new (or revived) local candidate with every remote one.
    pub(super) fn form_pairs_for_local(&mut self, now: Instant, l: usize) {
        for r in 0..self.remotes.len() {
            self.add_pair(now, l, r);
        }
    }

    /// The pair of `l` and `r`, formed if new and allowed. Only host and relayed candidates
    /// are paired: a server-reflexive candidate's pairs are its base's (the pruning of RFC 8445
    /// section 6.1.2.4), and a local peer-reflexive one exists only inside valid pairs.
    fn add_pair(&mut self, now: Instant, l: usize, r: usize) -> Option<usize> {
        if let Some(p) = self
            .pairs
            .iter()
            .position(|p| usize::from(p.local) == l && usize::from(p.remote) == r)
        {
            return Some(p);
        }
        let local = &self.locals[l];
        let remote = &self.remotes[r];
        if !matches!(local.kind, CandidateKind::Host | CandidateKind::Relayed)
            || local.live != Live::Active
            || !same_family(&local.addr, &remote.addr)
            || self.pairs.len() >= MAX_PAIRS
        {
            return None;
        }
        let priority = self.pair_priority_of(l, r);
        self.pairs.push(Pair::new(l as u16, r as u16, priority));
        if local.kind == CandidateKind::Relayed {
            // RFC 8656 section 9 and RFC 8445 section 14.3 (via RFC 8656): the relay forwards
            // nothing to or from the peer without a permission for its IP. One request per IP,
            // so that a peer address the server refuses (403) does not take others down with it.
            let ip = remote.addr.ip();
            if let Some(turn) = self.bases[usize::from(local.base)].turn.as_deref_mut() {
                if turn.allocation().is_some() && !turn.has_permission(ip) {
                    let _ = turn.create_permission(now, &[ip]);
                }
            }
        }
        if self.state == State::Failed {
            self.state = State::Checking;
        }
        Some(self.pairs.len() - 1)
    }

    fn pair_priority_of(&self, l: usize, r: usize) -> u64 {
        let (lp, rp) = (self.locals[l].priority, self.remotes[r].priority);
        if self.controlling {
            pair_priority(lp, rp)
        } else {
            pair_priority(rp, lp)
        }
    }

    /// A CreatePermission failed (403 for an address the server will not relay to, typically
    /// a private one): the relayed pairs to addresses left without a permission cannot work,
    /// so they fail now instead of after their whole retransmission schedule.
    pub(super) fn fail_pairs_without_permission(&mut self, now: Instant, b: usize) {
        for p in 0..self.pairs.len() {
            let pair = &self.pairs[p];
            let local = &self.locals[usize::from(pair.local)];
            let peer = self.remotes[usize::from(pair.remote)].addr.ip();
            let doomed = usize::from(local.base) == b
                && local.kind == CandidateKind::Relayed
                && pair.state != PairState::Failed
                && Some(p as u16) != self.selected
                && self.bases[b]
                    .turn
                    .as_deref()
                    .is_some_and(|t| !t.has_permission(peer));
            if doomed {
                if let Some(tid) = self.pairs[p].in_flight.take() {
                    self.checks.remove(&tid);
                }
                self.check_failed_on(now, p, CheckKind::Connectivity);
            }
        }
    }

    pub(super) fn fail_pairs_of_local(&mut self, l: usize) {
        for p in 0..self.pairs.len() {
            if usize::from(self.pairs[p].local) != l {
                continue;
            }
            if let Some(tid) = self.pairs[p].in_flight.take() {
                self.checks.remove(&tid);
            }
            self.pairs[p].state = PairState::Failed;
            if self.nominating == Some(p as u16) {
                self.nominating = None;
            }
            if self.selected == Some(p as u16) && self.state == State::Connected {
                self.disconnect();
            }
        }
    }

    fn trigger(&mut self, p: usize) {
        let p = p as u16;
        if !self.triggered.contains(&p) {
            self.triggered.push_back(p);
        }
        // The peer's checks reach us after all: there is something to try again.
        if self.state == State::Failed {
            self.state = State::Checking;
        }
    }

    // -----------------------------------------------------------------------------------------
    // Sending checks.

    /// Whether a check could start now if Ta allows.
    pub(super) fn has_check_to_start(&self) -> bool {
        self.state == State::Checking
            && self.remote_creds.is_some()
            && !self.checks.is_full()
            && (!self.triggered.is_empty()
                || (self.selected.is_none()
                    && self.pairs.iter().any(|p| p.state == PairState::Waiting)))
    }

    /// RFC 8445 section 6.1.4.2: at most one new check per Ta, triggered checks first, then
    /// the highest-priority Waiting pair.
    pub(super) fn pace(&mut self, now: Instant) {
        if !self.has_check_to_start() || self.last_check.is_some_and(|t| now < t + self.config.ta) {
            return;
        }
        loop {
            let next = match self.triggered.pop_front() {
                Some(p) => Some(usize::from(p)),
                None if self.selected.is_none() => self
                    .pairs
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.state == PairState::Waiting)
                    .max_by_key(|(_, p)| p.priority)
                    .map(|(i, _)| i),
                None => None,
            };
            let Some(p) = next else {
                return;
            };
            let kind = if self.nominating == Some(p as u16) {
                CheckKind::Nomination
            } else {
                CheckKind::Connectivity
            };
            // A triggered entry may have gone stale (the pair succeeded or failed meanwhile).
            if kind == CheckKind::Connectivity && self.pairs[p].state != PairState::Waiting {
                continue;
            }
            if let Some(tid) = self.pairs[p].in_flight.take() {
                self.checks.remove(&tid);
            }
            if self.start_check(now, p, kind) {
                self.last_check = Some(now);
            }
            return;
        }
    }

    fn start_check(&mut self, now: Instant, p: usize, kind: CheckKind) -> bool {
        let pair = &self.pairs[p];
        let local = &self.locals[usize::from(pair.local)];
        let local_pref = self.bases[usize::from(local.base)].local_pref;
        // PRIORITY is what a peer-reflexive candidate learned from this check would get
        // (RFC 8445 section 7.1.1). From a relayed candidate the peer can only learn the relay
        // again, so the check keeps the relayed type preference: announced as peer-reflexive
        // it would rank a relayed path above the direct server-reflexive ones.
        let kind_pref = match local.kind {
            CandidateKind::Relayed => CandidateKind::Relayed,
            _ => CandidateKind::PeerReflexive,
        };
        let check = Check {
            pair: p as u16,
            kind,
            controlling: self.controlling,
            priority: candidate_priority(kind_pref, local_pref, COMPONENT),
        };
        let to = self.remotes[usize::from(pair.remote)].addr;
        let tid = self.rng.transaction_id();
        if self.checks.start(now, tid, to, check).is_err() {
            return false;
        }
        let pair = &mut self.pairs[p];
        match kind {
            CheckKind::Connectivity => {
                pair.state = PairState::InProgress;
                pair.in_flight = Some(tid);
            }
            CheckKind::Nomination => pair.in_flight = Some(tid),
            CheckKind::Consent => {}
        }
        self.stats.checks_sent += 1;
        true
    }

    /// Writes a check (first copy or retransmission) for `poll_transmit`.
    pub(super) fn write_check(
        &mut self,
        tid: TransactionId,
        to: SocketAddr,
        check: &Check,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        let remote = self.remote_creds.as_ref()?;
        let pair = self.pairs.get(usize::from(check.pair))?;
        let req = CheckRequest {
            priority: check.priority,
            role: if check.controlling {
                Role::Controlling(self.tie_breaker)
            } else {
                Role::Controlled(self.tie_breaker)
            },
            use_candidate: check.kind == CheckKind::Nomination,
        };
        // Written on the stack first: relayed, it still has to be wrapped for the TURN server.
        let mut msg = [0u8; MAX_CHECK_LEN];
        let n = encode_request(
            &mut msg,
            tid,
            self.local_creds.ufrag(),
            remote.ufrag(),
            remote.pwd(),
            &req,
        )
        .ok()?;
        let local = usize::from(pair.local);
        self.send_via(local, to, &msg[..n], buf).ok()
    }

    pub(super) fn write_answer(&mut self, a: &PendingAnswer, buf: &mut [u8]) -> Option<Transmit> {
        let mut msg = [0u8; MAX_CHECK_LEN];
        let n = encode_answer(&mut msg, a.tid, self.local_creds.pwd(), &a.answer).ok()?;
        self.send_via(usize::from(a.local), a.to, &msg[..n], buf)
            .ok()
    }

    // -----------------------------------------------------------------------------------------
    // Nomination, selection, consent, failure.

    /// Regular nomination (RFC 8445 section 8.1.1): the controlling agent picks the best valid
    /// pair once nothing better can come (both sides done gathering, no better pair left to
    /// check) or once `nomination_delay` passed since the first success, and repeats its check
    /// with USE-CANDIDATE.
    pub(super) fn maybe_nominate(&mut self, now: Instant) {
        if !self.controlling
            || self.state != State::Checking
            || self.selected.is_some()
            || self.nominating.is_some()
        {
            return;
        }
        let settled = self.nominate_at.is_some_and(|t| now >= t);
        let Some((best, best_prio)) = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PairState::Succeeded)
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, p)| (i, p.priority))
        else {
            // Nothing to nominate (the last valid pair failed its nomination): the timer is
            // disarmed, or `poll_timeout` would keep returning an instant already past. The next
            // success arms it again.
            if settled {
                self.nominate_at = None;
            }
            return;
        };
        let better_pending = self.pairs.iter().any(|p| {
            matches!(p.state, PairState::Waiting | PairState::InProgress) && p.priority > best_prio
        });
        // A relayed pair is settled for early only when no direct pair can appear any more. A
        // direct path through NATs whose mappings depend on the destination shows up late: as
        // the peer-reflexive candidate of the peer's triggered check, after this agent's own
        // check to the peer's server-reflexive address failed (the answer came back from another
        // port). Nominating the relay the moment its check succeeds would race that discovery,
        // so the relay waits for `nomination_delay` unless one side offers nothing but relays.
        let best_pair = &self.pairs[best];
        let relayed = self.locals[usize::from(best_pair.local)].kind == CandidateKind::Relayed
            || self.remotes[usize::from(best_pair.remote)].kind == CandidateKind::Relayed;
        let direct_possible = self.config.policy == Policy::All
            && self
                .remotes
                .iter()
                .any(|r| r.kind != CandidateKind::Relayed);
        let complete = self.gathering == Step::Done
            && self.remote_gathering_done
            && !better_pending
            && !(relayed && direct_possible);
        if complete || settled {
            let best = best as u16;
            self.nominating = Some(best);
            self.triggered.retain(|&p| p != best);
            self.triggered.push_front(best);
        }
    }

    /// Section 8.1.1 / 7.3.1.5: the pair data flows on from now on. Checks on other pairs stop
    /// (section 8.1.2), consent freshness starts, and a relayed pair gets a channel so that data
    /// travels as 4-byte-header ChannelData instead of Send indications.
    fn select(&mut self, now: Instant, p: usize) {
        self.selected = Some(p as u16);
        self.state = State::Connected;
        self.nominating = None;
        self.nominate_at = None;
        self.triggered.clear();
        for (i, pair) in self.pairs.iter_mut().enumerate() {
            if i != p {
                if let Some(tid) = pair.in_flight.take() {
                    self.checks.remove(&tid);
                }
            }
        }
        let next = now + jittered(&mut self.rng, self.config.consent_interval);
        self.consent = Some(Consent {
            next,
            deadline: now + self.config.consent_timeout,
        });
        let pair = &self.pairs[p];
        let local = &self.locals[usize::from(pair.local)];
        if local.kind == CandidateKind::Relayed {
            let peer = self.remotes[usize::from(pair.remote)].addr;
            if let Some(turn) = self.bases[usize::from(local.base)].turn.as_deref_mut() {
                if turn.channel(peer).is_none() {
                    let _ = turn.channel_bind(now, peer);
                }
            }
        }
        let info = self.pair_info(p);
        self.emit(Event::Connected(info));
    }

    /// RFC 7675 section 5.1: a check on the selected pair every consent interval; no response
    /// for the consent timeout and the pair may no longer be used.
    pub(super) fn tick_consent(&mut self, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        let (Some(c), Some(p)) = (self.consent, self.selected) else {
            return;
        };
        if now >= c.deadline {
            self.disconnect();
            return;
        }
        if now >= c.next {
            // A full table only delays this probe to the next interval.
            self.start_check(now, usize::from(p), CheckKind::Consent);
            let next = now + jittered(&mut self.rng, self.config.consent_interval);
            if let Some(c) = &mut self.consent {
                c.next = next;
            }
        }
    }

    pub(super) fn disconnect(&mut self) {
        self.state = State::Disconnected;
        self.consent = None;
        // Nothing is checked any more until a restart.
        for pair in &mut self.pairs {
            pair.in_flight = None;
        }
        self.checks = Self::check_table(&self.config);
        self.emit(Event::Disconnected);
    }

    /// Declares failure once every pair failed and neither side can add candidates.
    pub(super) fn check_failed(&mut self) {
        if self.state != State::Checking
            || self.selected.is_some()
            || self.nominating.is_some()
            || self.gathering != Step::Done
            || !self.remote_gathering_done
            || self.remote_creds.is_none()
            || !self.triggered.is_empty()
            || self.pairs.iter().any(|p| p.state != PairState::Failed)
        {
            return;
        }
        self.state = State::Failed;
        self.emit(Event::Failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use crate::message::{encode_request, CheckRequest, Role};
    use crate::Agent;

    #[test]
    fn a_storm_of_new_sources_teaches_a_bounded_number_of_candidates() {
        let t0 = Instant::now();
        let mut agent = Agent::new(AgentConfig::new(false, [3; 32])).unwrap();
        let base: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        agent.add_host(base, None).unwrap();
        agent.gather(t0);
        agent
            .set_remote_credentials("peer", "peerpassword0123456789xx")
            .unwrap();
        let creds = agent.local_credentials().clone();
        let (mut buf, mut out) = ([0u8; 1500], [0u8; 1500]);
        let req = CheckRequest {
            priority: 1000,
            role: Role::Controlling(1),
            use_candidate: false,
        };
        // Forty checks, each from a port never seen before, as two APDM NATs make them.
        for i in 0..40u16 {
            let from = SocketAddr::from(([192, 0, 2, 1], 20000 + i));
            let tid = TransactionId([i as u8; 12]);
            let n =
                encode_request(&mut buf, tid, "peer", creds.ufrag(), creds.pwd(), &req).unwrap();
            assert_eq!(
                agent.handle_input(t0, base, from, &buf[..n]),
                Input::Handled
            );
            // Answered all the same (RFC 8445 section 7.3.1.2).
            let mut answered = false;
            while let Some(t) = agent.poll_transmit(&mut out) {
                let m = Message::parse(&out[..t.len]).unwrap();
                answered |=
                    t.to == from && m.class() == Class::Success && m.transaction_id() == tid;
            }
            assert!(answered, "check {i} answered");
        }
        assert_eq!(agent.stats().checks_received, 40);
        assert_eq!(agent.stats().peer_reflexive, MAX_PRFLX_PER_LOCAL as u64);
        assert_eq!(agent.remotes.len(), MAX_PRFLX_PER_LOCAL);
    }
}
