//! The STUN messages of connectivity checks (RFC 8445 section 7): Binding requests signed with
//! the short-term credentials, their success and error responses, and the validation of what
//! arrives.
//!
//! Every message is written into a caller's buffer and every received one is read in place;
//! nothing here allocates.

use core::net::SocketAddr;

use uturn_proto::stun::attr::{
    types, ErrorCode, IceControlled, IceControlling, Priority, UseCandidate, Username,
    XorMappedAddress,
};
use uturn_proto::stun::integrity::short_term_key;
use uturn_proto::stun::{Class, EncodeError, Encoder, Message, MessageType, Method, TransactionId};

/// The longest check this agent writes: header 20, USERNAME 4 + 513 (two 256-char ufrags and
/// the colon, padded to 516), PRIORITY 8, ICE-CONTROLLING 12, USE-CANDIDATE 4,
/// MESSAGE-INTEGRITY 24, FINGERPRINT 8.
pub(crate) const MAX_CHECK_LEN: usize = 20 + 4 + 516 + 8 + 12 + 4 + 24 + 8;

/// ERROR-CODE 487 (RFC 8445 section 7.3.1.1).
pub(crate) const ROLE_CONFLICT: u16 = 487;

/// The role a check claims, with the sender's tie-breaker.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Controlling(u64),
    Controlled(u64),
}

/// What a check request carries besides the credentials.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckRequest {
    /// PRIORITY: the priority a peer-reflexive candidate learned from this check would get
    /// (RFC 8445 section 7.1.1).
    pub priority: u32,
    pub role: Role,
    /// USE-CANDIDATE: the controlling agent nominates the pair (RFC 8445 section 8.1.1).
    pub use_candidate: bool,
}

/// Writes a Binding request (RFC 8445 section 7.2.2): USERNAME `remote:local`, PRIORITY, the
/// role, USE-CANDIDATE when nominating, MESSAGE-INTEGRITY keyed with the remote password and
/// FINGERPRINT.
pub(crate) fn encode_request(
    buf: &mut [u8],
    tid: TransactionId,
    local_ufrag: &str,
    remote_ufrag: &str,
    remote_pwd: &str,
    req: &CheckRequest,
) -> Result<usize, EncodeError> {
    let mut enc = Encoder::new(buf, MessageType::new(Method::BINDING, Class::Request), tid)?;
    // USERNAME is written from pieces into a stack buffer rather than formatted into a String,
    // so a check costs no allocation. Both ufrags are at most 256 bytes (validated).
    let mut user = [0u8; 513];
    let (r, l) = (remote_ufrag.as_bytes(), local_ufrag.as_bytes());
    let len = r.len() + 1 + l.len();
    let user = user.get_mut(..len).ok_or(EncodeError::ValueTooLong)?;
    user[..r.len()].copy_from_slice(r);
    user[r.len()] = b':';
    user[r.len() + 1..].copy_from_slice(l);
    enc.add_raw(types::USERNAME, user)?;
    enc.add(&Priority(req.priority))?;
    match req.role {
        Role::Controlling(t) => enc.add(&IceControlling(t))?,
        Role::Controlled(t) => enc.add(&IceControlled(t))?,
    }
    if req.use_candidate {
        enc.add(&UseCandidate)?;
    }
    enc.message_integrity(short_term_key(remote_pwd))?;
    enc.fingerprint()?;
    Ok(enc.finish())
}

/// What a response says.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Success: where the peer saw the request come from (XOR-MAPPED-ADDRESS).
    Success {
        mapped: SocketAddr,
    },
    Error(u16),
}

/// Writes the answer to a check (RFC 8445 section 7.3.1.2 and RFC 8489 section 9.1.4),
/// signed with the local password.
pub(crate) fn encode_answer(
    buf: &mut [u8],
    tid: TransactionId,
    local_pwd: &str,
    answer: &Answer,
) -> Result<usize, EncodeError> {
    let class = match answer {
        Answer::Success { .. } => Class::Success,
        Answer::Error(_) => Class::Error,
    };
    let mut enc = Encoder::new(buf, MessageType::new(Method::BINDING, class), tid)?;
    match *answer {
        Answer::Success { mapped } => enc.add(&XorMappedAddress(mapped))?,
        Answer::Error(code) => enc.add(&ErrorCode {
            code,
            reason: if code == ROLE_CONFLICT {
                "Role Conflict"
            } else {
                "Bad Request"
            },
        })?,
    }
    enc.message_integrity(short_term_key(local_pwd))?;
    enc.fingerprint()?;
    Ok(enc.finish())
}

/// Why a received check request was dropped. RFC 8489 section 9.1.3 would answer some of these
/// with 400 or 401; this agent stays silent, so a forged request cannot make it send anything.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BadRequest {
    /// No FINGERPRINT, or a wrong one: ICE requires it on every check (RFC 8445 section 7.2.2).
    Fingerprint,
    /// Comprehension-required attributes this agent does not know (RFC 8489 section 6.3.1).
    UnknownAttributes,
    /// USERNAME missing, or its first part is not this agent's ufrag.
    Username,
    /// MESSAGE-INTEGRITY missing or not made with this agent's password.
    Integrity,
    /// PRIORITY missing or malformed (RFC 8445 section 7.1.1 makes it mandatory).
    Priority,
    /// Neither ICE-CONTROLLING nor ICE-CONTROLLED, or both.
    Role,
}

/// A check request that passed validation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidRequest {
    pub priority: u32,
    pub role: Role,
    pub use_candidate: bool,
}

/// Validates a Binding request addressed to this agent (RFC 8445 section 7.3, RFC 8489
/// section 9.1.3 for short-term credentials). The integrity check comes before anything that
/// depends on the message's contents.
pub(crate) fn validate_request(
    msg: &Message<'_>,
    local_ufrag: &str,
    local_pwd: &str,
) -> Result<ValidRequest, BadRequest> {
    if msg.check_fingerprint().is_err() {
        return Err(BadRequest::Fingerprint);
    }
    if !msg.unknown_attributes().is_empty() {
        return Err(BadRequest::UnknownAttributes);
    }
    let Ok(Some(Username(user))) = msg.get::<Username<'_>>() else {
        return Err(BadRequest::Username);
    };
    // RFC 8445 section 7.3: the part before the colon names the receiving agent. The sender's
    // part is not checked: a check may arrive before its ufrag was signalled.
    if user.split_once(':').map(|(ours, _)| ours) != Some(local_ufrag) {
        return Err(BadRequest::Username);
    }
    if msg.verify_integrity(short_term_key(local_pwd)).is_err() {
        return Err(BadRequest::Integrity);
    }
    let Ok(Some(Priority(priority))) = msg.get::<Priority>() else {
        return Err(BadRequest::Priority);
    };
    let role = match (msg.get::<IceControlling>(), msg.get::<IceControlled>()) {
        (Ok(Some(IceControlling(t))), Ok(None)) => Role::Controlling(t),
        (Ok(None), Ok(Some(IceControlled(t)))) => Role::Controlled(t),
        _ => return Err(BadRequest::Role),
    };
    let use_candidate = matches!(msg.get::<UseCandidate>(), Ok(Some(_)));
    Ok(ValidRequest {
        priority,
        role,
        use_candidate,
    })
}

/// Why a response to a check was dropped (as if never received, RFC 8489 section 9.1.3.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BadResponse {
    Fingerprint,
    /// Not signed with the remote password.
    Integrity,
    /// A success without XOR-MAPPED-ADDRESS or an error without a valid ERROR-CODE.
    Malformed,
}

/// Validates a response to a check: FINGERPRINT, MESSAGE-INTEGRITY with the remote password,
/// then the one attribute that matters.
pub(crate) fn validate_response(
    msg: &Message<'_>,
    remote_pwd: &str,
) -> Result<Answer, BadResponse> {
    if msg.check_fingerprint().is_err() {
        return Err(BadResponse::Fingerprint);
    }
    if msg.verify_integrity(short_term_key(remote_pwd)).is_err() {
        return Err(BadResponse::Integrity);
    }
    match msg.class() {
        Class::Success => match msg.get::<XorMappedAddress>() {
            Ok(Some(XorMappedAddress(mapped))) => Ok(Answer::Success { mapped }),
            _ => Err(BadResponse::Malformed),
        },
        _ => match msg.get::<ErrorCode<'_>>() {
            Ok(Some(e)) => Ok(Answer::Error(e.code)),
            _ => Err(BadResponse::Malformed),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = TransactionId([9; 12]);

    fn request(use_candidate: bool) -> Vec<u8> {
        let mut buf = vec![0u8; MAX_CHECK_LEN];
        let req = CheckRequest {
            priority: 1_845_501_695,
            role: Role::Controlling(42),
            use_candidate,
        };
        let n = encode_request(
            &mut buf,
            TID,
            "LFRG",
            "RFRG",
            "remote-password-of-22+",
            &req,
        )
        .unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn requests_carry_what_rfc8445_7_2_2_asks() {
        let bytes = request(true);
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(msg.class(), Class::Request);
        assert_eq!(msg.method(), Method::BINDING);
        assert_eq!(
            msg.get::<Username<'_>>().unwrap(),
            Some(Username("RFRG:LFRG"))
        );
        // The receiver (whose ufrag is RFRG) validates it with its own password.
        let v = validate_request(&msg, "RFRG", "remote-password-of-22+").unwrap();
        assert_eq!(
            v,
            ValidRequest {
                priority: 1_845_501_695,
                role: Role::Controlling(42),
                use_candidate: true
            }
        );
        assert!(
            !validate_request(
                &Message::parse(&request(false)).unwrap(),
                "RFRG",
                "remote-password-of-22+"
            )
            .unwrap()
            .use_candidate
        );
        assert_eq!(
            validate_request(&msg, "LFRG", "remote-password-of-22+"),
            Err(BadRequest::Username)
        );
        assert_eq!(
            validate_request(&msg, "RFRG", "another-password-of-22"),
            Err(BadRequest::Integrity)
        );
        // Maximal ufrags fit the declared bound.
        let long = "u".repeat(256);
        let mut buf = vec![0u8; MAX_CHECK_LEN];
        let req = CheckRequest {
            priority: 1,
            role: Role::Controlled(1),
            use_candidate: true,
        };
        assert_eq!(
            encode_request(&mut buf, TID, &long, &long, "p", &req),
            Ok(MAX_CHECK_LEN),
            "ICE-CONTROLLED is as long as ICE-CONTROLLING"
        );
    }

    #[test]
    fn tampering_is_detected() {
        let mut bytes = request(false);
        // Flip a bit in PRIORITY: the fingerprint catches it first.
        bytes[20 + 4 + 12 + 4] ^= 1;
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(
            validate_request(&msg, "RFRG", "remote-password-of-22+"),
            Err(BadRequest::Fingerprint)
        );
    }

    #[test]
    fn answers_round_trip() {
        let mapped: SocketAddr = "203.0.113.5:4000".parse().unwrap();
        for answer in [
            Answer::Success { mapped },
            Answer::Error(ROLE_CONFLICT),
            Answer::Error(400),
        ] {
            let mut buf = [0u8; 256];
            let n = encode_answer(&mut buf, TID, "local-password-of-22ch", &answer).unwrap();
            let msg = Message::parse(&buf[..n]).unwrap();
            assert_eq!(msg.transaction_id(), TID);
            assert_eq!(
                validate_response(&msg, "local-password-of-22ch"),
                Ok(answer)
            );
            assert_eq!(
                validate_response(&msg, "wrong-password-of-22ch"),
                Err(BadResponse::Integrity)
            );
        }
    }
}
