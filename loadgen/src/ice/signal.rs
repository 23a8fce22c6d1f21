//! The in-process signalling channel between the two agents of a pair.
//!
//! What a browser application sends through its signalling server, as SDP attribute lines
//! (RFC 8839): `a=ice-ufrag` and `a=ice-pwd` (section 5.4), one `a=candidate` per candidate as it
//! is gathered (section 5.1, trickled as RFC 8838 does), and `a=end-of-candidates` (RFC 8838
//! section 8.2) when gathering is done. Lines cross the channel as text and are parsed on the
//! other side with the same code that would parse a remote peer's, so the agents never share a
//! Rust value: the round trip through the grammar is part of what a run exercises.
//!
//! The channel is a FIFO per worker (both agents of a pair live in one worker), so lines arrive
//! in the order they were sent, as over one signalling connection.

use std::collections::VecDeque;

use uturn_ice::{Candidate, SdpError};

use crate::fabric::AgentIx;

/// One parsed signalling line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    Ufrag(String),
    Pwd(String),
    Candidate(Candidate),
    EndOfCandidates,
}

/// Why a line was refused. The sender is loadgen itself, so any of these is a bug worth
/// counting, not a hostile peer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("not an ICE attribute line")]
    Unknown,
    #[error("candidate: {0}")]
    Candidate(#[from] SdpError),
}

/// Longest line accepted: ufrag and password are at most 256 characters (RFC 8839 section 5.4),
/// a candidate line at most [`uturn_ice::sdp::MAX_LINE`].
const MAX_LINE: usize = 1100;

impl Signal {
    /// The SDP attribute line for `a=ice-ufrag`, `a=ice-pwd` or `a=end-of-candidates`.
    pub fn ufrag_line(ufrag: &str) -> String {
        format!("a=ice-ufrag:{ufrag}")
    }

    pub fn pwd_line(pwd: &str) -> String {
        format!("a=ice-pwd:{pwd}")
    }

    pub const END_OF_CANDIDATES: &'static str = "a=end-of-candidates";

    /// Parses one line, with or without its `a=` prefix and line ending. The ufrag and password
    /// are checked by the agent when both have arrived ([`uturn_ice::Credentials::new`]).
    pub fn parse(line: &str) -> Result<Signal, SignalError> {
        if line.len() > MAX_LINE {
            return Err(SignalError::Unknown);
        }
        let l = line.trim_end_matches(['\r', '\n']);
        let l = l.strip_prefix("a=").unwrap_or(l);
        if let Some(u) = l.strip_prefix("ice-ufrag:") {
            return Ok(Signal::Ufrag(u.to_string()));
        }
        if let Some(p) = l.strip_prefix("ice-pwd:") {
            return Ok(Signal::Pwd(p.to_string()));
        }
        if l == "end-of-candidates" {
            return Ok(Signal::EndOfCandidates);
        }
        if l.starts_with("candidate:") {
            return Ok(Signal::Candidate(Candidate::parse(l)?));
        }
        Err(SignalError::Unknown)
    }
}

/// Lines on their way to an agent.
#[derive(Debug, Default)]
pub struct Channel {
    queue: VecDeque<(AgentIx, String)>,
}

impl Channel {
    pub fn send(&mut self, to: AgentIx, line: String) {
        self.queue.push_back((to, line));
    }

    pub fn recv(&mut self) -> Option<(AgentIx, String)> {
        self.queue.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uturn_ice::{Address, CandidateKind};

    #[test]
    fn every_line_round_trips() {
        assert_eq!(
            Signal::parse(&Signal::ufrag_line("abcd")),
            Ok(Signal::Ufrag("abcd".into()))
        );
        assert_eq!(
            Signal::parse("a=ice-pwd:0123456789abcdef012345\r\n"),
            Ok(Signal::Pwd("0123456789abcdef012345".into()))
        );
        assert_eq!(
            Signal::parse(Signal::END_OF_CANDIDATES),
            Ok(Signal::EndOfCandidates)
        );
        let line = "a=candidate:1 1 udp 2130706431 1f4712db-ea17-4bcf-a596-105139dfd8bf.local 5000 typ host";
        let Ok(Signal::Candidate(c)) = Signal::parse(line) else {
            panic!("candidate line");
        };
        assert_eq!(c.kind, CandidateKind::Host);
        assert!(matches!(c.address, Address::Name(_)));
        assert_eq!(c.to_sdp_line(), line);
    }

    #[test]
    fn junk_is_refused_not_panicked_on() {
        for l in [
            "",
            "a=",
            "a=fingerprint:sha-256 00",
            "a=candidate:1 1 tcp 1 127.0.0.1 9 typ host",
            "a=candidate:",
            &"x".repeat(5000),
        ] {
            assert!(Signal::parse(l).is_err(), "{l:?}");
        }
        assert_eq!(
            Signal::parse("a=candidate:1 1 tcp 1 127.0.0.1 9 typ host"),
            Err(SignalError::Candidate(SdpError::UnsupportedTransport))
        );
    }

    #[test]
    fn the_channel_keeps_order() {
        let mut ch = Channel::default();
        ch.send(1, "a".into());
        ch.send(0, "b".into());
        assert_eq!(ch.recv(), Some((1, "a".into())));
        assert_eq!(ch.recv(), Some((0, "b".into())));
        assert!(ch.is_empty());
    }
}
