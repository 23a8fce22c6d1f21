//! Client transactions (RFC 8489 section 6.2): when a request is sent again, when it is given up,
//! and which response belongs to which request.
//!
//! The table holds no message bytes. It decides *when* a request goes out; its owner encodes the
//! request again from its own description each time [`Transactions::poll_transmit`] names it.
//! Encoding is deterministic, so a retransmission carries the same bytes as the first copy
//! (unless the owner's credentials changed in between, which only makes it more likely to be
//! accepted), and a client with nothing outstanding holds no buffers.

use core::net::SocketAddr;
use core::time::Duration;
use std::time::Instant;

use crate::stun::TransactionId;

/// The transport a client talks to its server over. It decides whether requests are
/// retransmitted (RFC 8489 section 6.2.1: only over unreliable transports) and whether
/// ChannelData is padded (RFC 8656 section 12.5: only over stream transports). DTLS behaves as UDP.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// TCP and TLS deliver or fail on their own; the client never retransmits over them.
    pub const fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }
}

/// The retransmission schedule, as data (RFC 8489 sections 6.2.1 and 6.2.2).
///
/// Over UDP a request is sent at 0, then again after RTO, 2*RTO, 4*RTO, ... until `Rc`
/// transmissions in all; after the last one the client waits `Rm * RTO` more and gives up. With
/// the defaults (RTO 500 ms, Rc 7, Rm 16) that is transmissions at 0, 500, 1500, 3500, 7500,
/// 15500 and 31500 ms and a timeout at 39500 ms, the RFC's own example. Over TCP and TLS the
/// request is sent once and given up after `Ti` (39.5 s).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RetransmitPolicy {
    /// The initial retransmission timeout. RFC 8489 section 6.2.1 recommends 500 ms for fixed
    /// lines; a caller that measured the round-trip time may pass a better value.
    pub rto: Duration,
    /// `Rc`: how many times a request is sent over UDP, the first one included.
    pub max_transmits: u32,
    /// `Rm`: after the last transmission the client waits `Rm * rto` for a response.
    pub last_wait_factor: u32,
    /// `Ti`: how long a request over TCP or TLS waits for its response.
    pub reliable_timeout: Duration,
}

impl RetransmitPolicy {
    /// The defaults of RFC 8489 sections 6.2.1 and 6.2.2.
    pub const RFC8489: RetransmitPolicy = RetransmitPolicy {
        rto: Duration::from_millis(500),
        max_transmits: 7,
        last_wait_factor: 16,
        reliable_timeout: Duration::from_millis(39_500),
    };

    /// How many times a request is sent over `transport`.
    pub fn transmits(&self, transport: Transport) -> u32 {
        if transport.is_reliable() {
            1
        } else {
            self.max_transmits.max(1)
        }
    }

    /// The wait after the `n`th transmission (1-based): until the next one, or, after the last,
    /// until the request is given up.
    pub fn wait_after(&self, n: u32, transport: Transport) -> Duration {
        if transport.is_reliable() {
            return self.reliable_timeout;
        }
        if n >= self.transmits(transport) {
            return self.rto.saturating_mul(self.last_wait_factor);
        }
        // The RTO doubles after every transmission.
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.rto.saturating_mul(factor)
    }

    /// When each transmission happens, counted from the first.
    pub fn send_times(&self, transport: Transport) -> impl Iterator<Item = Duration> + '_ {
        let mut at = Duration::ZERO;
        (1..=self.transmits(transport)).map(move |n| {
            let this = at;
            at = at.saturating_add(self.wait_after(n, transport));
            this
        })
    }

    /// When the request is given up, counted from the first transmission.
    pub fn timeout(&self, transport: Transport) -> Duration {
        (1..=self.transmits(transport))
            .map(|n| self.wait_after(n, transport))
            .fold(Duration::ZERO, Duration::saturating_add)
    }
}

impl Default for RetransmitPolicy {
    fn default() -> Self {
        RetransmitPolicy::RFC8489
    }
}

/// The table is full: the caller has as many requests outstanding as it allowed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("too many transactions outstanding")]
pub struct TableFull;

#[derive(Debug)]
struct Slot<T> {
    id: TransactionId,
    to: SocketAddr,
    ctx: T,
    /// Transmissions decided so far, the first included.
    transmits: u32,
    /// When the next retransmission is due or, once all are spent, when the request times out.
    next: Instant,
    /// A transmission has been decided and not yet handed out by `poll_transmit`.
    due: bool,
}

/// Outstanding client transactions, each with a context `T` its owner needs to encode the
/// request again and to act on its response.
///
/// Bounded: a client has a handful of requests in flight, so the table is a short vector that is
/// scanned linearly, and [`Transactions::start`] refuses more than `capacity`.
#[derive(Debug)]
pub struct Transactions<T> {
    slots: Vec<Slot<T>>,
    capacity: usize,
    policy: RetransmitPolicy,
    transport: Transport,
}

impl<T> Transactions<T> {
    pub fn new(capacity: usize, policy: RetransmitPolicy, transport: Transport) -> Self {
        Transactions {
            slots: Vec::new(),
            capacity,
            policy,
            transport,
        }
    }

    pub fn policy(&self) -> &RetransmitPolicy {
        &self.policy
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// Starts a transaction whose first transmission is due now.
    pub fn start(
        &mut self,
        now: Instant,
        id: TransactionId,
        to: SocketAddr,
        ctx: T,
    ) -> Result<(), TableFull> {
        if self.is_full() {
            return Err(TableFull);
        }
        self.slots.push(Slot {
            id,
            to,
            ctx,
            transmits: 1,
            next: now + self.policy.wait_after(1, self.transport),
            due: true,
        });
        Ok(())
    }

    /// The next request to put on the wire, first or retransmitted; each decided transmission is
    /// handed out once.
    pub fn poll_transmit(&mut self) -> Option<(TransactionId, SocketAddr, &T)> {
        let slot = self.slots.iter_mut().find(|s| s.due)?;
        slot.due = false;
        Some((slot.id, slot.to, &slot.ctx))
    }

    /// The earliest instant at which [`Transactions::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots.iter().map(|s| s.next).min()
    }

    /// Decides the retransmissions that are due at `now`. Expired transactions are taken out
    /// with [`Transactions::pop_expired`].
    ///
    /// The next wait counts from `now`, not from when the retransmission was due, so a caller
    /// that wakes late does not send a burst of copies.
    pub fn handle_timeout(&mut self, now: Instant) {
        let max = self.policy.transmits(self.transport);
        for s in &mut self.slots {
            if s.next <= now && s.transmits < max {
                s.transmits += 1;
                s.due = true;
                s.next = now + self.policy.wait_after(s.transmits, self.transport);
            }
        }
    }

    /// Removes one transaction whose last wait has run out by `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(TransactionId, T)> {
        let max = self.policy.transmits(self.transport);
        let i = self
            .slots
            .iter()
            .position(|s| s.next <= now && s.transmits >= max)?;
        let s = self.slots.swap_remove(i);
        Some((s.id, s.ctx))
    }

    /// The context of an outstanding transaction.
    pub fn get(&self, id: &TransactionId) -> Option<&T> {
        self.slots.iter().find(|s| s.id == *id).map(|s| &s.ctx)
    }

    /// Ends a transaction, typically because its response arrived.
    pub fn remove(&mut self, id: &TransactionId) -> Option<T> {
        let i = self.slots.iter().position(|s| s.id == *id)?;
        Some(self.slots.swap_remove(i).ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn server() -> SocketAddr {
        "192.0.2.1:3478".parse().unwrap()
    }

    #[test]
    fn rfc8489_udp_schedule() {
        // RFC 8489 section 6.2.1: "with an RTO of 500 ms, requests would be sent at times 0 ms,
        // 500 ms, 1500 ms, 3500 ms, 7500 ms, 15500 ms, and 31500 ms. If the client has not
        // received a response after 39500 ms, the client will consider the transaction to have
        // timed out."
        let p = RetransmitPolicy::default();
        let sends: Vec<Duration> = p.send_times(Transport::Udp).collect();
        let expected: Vec<Duration> = [0, 500, 1500, 3500, 7500, 15500, 31500]
            .into_iter()
            .map(MS)
            .collect();
        assert_eq!(sends, expected);
        assert_eq!(p.timeout(Transport::Udp), MS(39_500));
    }

    #[test]
    fn reliable_transports_send_once_and_wait_ti() {
        // RFC 8489 section 6.2.2: no retransmission over TCP; Ti = 39.5 s.
        let p = RetransmitPolicy::default();
        for t in [Transport::Tcp, Transport::Tls] {
            assert_eq!(p.send_times(t).collect::<Vec<_>>(), vec![Duration::ZERO]);
            assert_eq!(p.timeout(t), MS(39_500));
        }
    }

    #[test]
    fn other_policies_follow_the_same_rule() {
        let p = RetransmitPolicy {
            rto: MS(100),
            max_transmits: 3,
            last_wait_factor: 2,
            ..RetransmitPolicy::RFC8489
        };
        let sends: Vec<Duration> = p.send_times(Transport::Udp).collect();
        assert_eq!(sends, vec![MS(0), MS(100), MS(300)]);
        assert_eq!(p.timeout(Transport::Udp), MS(500));
        // Absurd values saturate instead of overflowing.
        let huge = RetransmitPolicy {
            rto: Duration::MAX,
            max_transmits: 100,
            last_wait_factor: u32::MAX,
            ..RetransmitPolicy::RFC8489
        };
        assert_eq!(huge.timeout(Transport::Udp), Duration::MAX);
    }

    /// Drives a table the way a client does and records when transmissions happen.
    fn run(transport: Transport) -> (Vec<Duration>, Option<Duration>) {
        let t0 = Instant::now();
        let mut table = Transactions::new(4, RetransmitPolicy::default(), transport);
        let id = TransactionId([7; 12]);
        table.start(t0, id, server(), "ctx").unwrap();
        let mut sends = Vec::new();
        let mut expired = None;
        let mut now = t0;
        for _ in 0..100 {
            while let Some((tid, to, ctx)) = table.poll_transmit() {
                assert_eq!((tid, to, *ctx), (id, server(), "ctx"));
                sends.push(now - t0);
            }
            if let Some((tid, ctx)) = table.pop_expired(now) {
                assert_eq!((tid, ctx), (id, "ctx"));
                expired = Some(now - t0);
                break;
            }
            now = table.poll_timeout().unwrap();
            table.handle_timeout(now);
        }
        assert!(table.is_empty());
        (sends, expired)
    }

    #[test]
    fn table_follows_the_schedule_and_expires() {
        let p = RetransmitPolicy::default();
        let (sends, expired) = run(Transport::Udp);
        assert_eq!(sends, p.send_times(Transport::Udp).collect::<Vec<_>>());
        assert_eq!(expired, Some(MS(39_500)));

        let (sends, expired) = run(Transport::Tcp);
        assert_eq!(sends, vec![Duration::ZERO]);
        assert_eq!(expired, Some(MS(39_500)));
    }

    #[test]
    fn late_wakeups_send_one_copy_not_a_burst() {
        let t0 = Instant::now();
        let mut table = Transactions::new(4, RetransmitPolicy::default(), Transport::Udp);
        table
            .start(t0, TransactionId([1; 12]), server(), ())
            .unwrap();
        assert!(table.poll_transmit().is_some());
        // Wake up 5 s late: three retransmissions were due, one goes out.
        let late = t0 + MS(5_000);
        table.handle_timeout(late);
        assert!(table.poll_transmit().is_some());
        assert!(table.poll_transmit().is_none());
        // The next one waits a full 2*RTO from now.
        assert_eq!(table.poll_timeout(), Some(late + MS(1_000)));
    }

    #[test]
    fn responses_match_by_id_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut table = Transactions::new(2, RetransmitPolicy::default(), Transport::Udp);
        let (a, b, c) = (
            TransactionId([1; 12]),
            TransactionId([2; 12]),
            TransactionId([3; 12]),
        );
        table.start(t0, a, server(), 'a').unwrap();
        table.start(t0, b, server(), 'b').unwrap();
        assert!(table.is_full());
        assert_eq!(table.start(t0, c, server(), 'c'), Err(TableFull));
        assert_eq!(table.get(&c), None);
        assert_eq!(table.get(&b), Some(&'b'));
        assert_eq!(table.remove(&a), Some('a'));
        assert_eq!(table.remove(&a), None, "a response is matched once");
        assert_eq!(table.len(), 1);
        table.start(t0, c, server(), 'c').unwrap();
        // Removing a transaction cancels its retransmissions.
        assert_eq!(table.remove(&b), Some('b'));
        assert_eq!(table.remove(&c), Some('c'));
        assert_eq!(table.poll_timeout(), None);
        assert!(table.poll_transmit().is_none());
    }
}
