//! Telling ICE checks apart from everything else an agent sends, so that `--chaos` can drop the
//! keepalives of a pair (its consent checks, RFC 7675) while its media keeps flowing.
//!
//! A check is a STUN Binding (RFC 8445 section 7.2.2). Sent straight to the peer it is the whole
//! datagram; sent through the relay it is the payload of a ChannelData message or the DATA
//! attribute of a Send indication (RFC 8656 sections 11 and 12). A Binding to the STUN server
//! itself (gathering a server-reflexive candidate) is not a check between the agents and is
//! never dropped.

use std::net::SocketAddr;

use uturn_proto::channel_data::ChannelData;
use uturn_proto::stun::attr::Data;
use uturn_proto::stun::{Class, Message, Method};
use uturn_proto::{classify, PacketKind};

/// Whether `bytes`, sent to `to`, carries a check or a check's answer between the agents.
/// `server` is the STUN/TURN server. Never panics on any input.
pub fn carries_check(bytes: &[u8], to: SocketAddr, server: SocketAddr) -> bool {
    if to != server {
        return is_binding(bytes);
    }
    match classify(bytes) {
        PacketKind::ChannelData => ChannelData::parse(bytes)
            .ok()
            .and_then(|cd| bytes.get(cd.payload_range()))
            .is_some_and(is_binding),
        PacketKind::Stun => {
            let Ok(msg) = Message::parse(bytes) else {
                return false;
            };
            if msg.method() != Method::SEND || msg.class() != Class::Indication {
                return false;
            }
            matches!(msg.get::<Data<'_>>(), Ok(Some(Data(inner))) if is_binding(inner))
        }
        PacketKind::Other => false,
    }
}

fn is_binding(bytes: &[u8]) -> bool {
    classify(bytes) == PacketKind::Stun
        && Message::parse(bytes).is_ok_and(|m| m.method() == Method::BINDING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uturn_proto::channel_data::write_header;
    use uturn_proto::stun::{Encoder, MessageType, TransactionId};
    use uturn_proto::ChannelNumber;

    fn binding(class: Class) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let enc = Encoder::new(
            &mut buf,
            MessageType::new(Method::BINDING, class),
            TransactionId([7; 12]),
        )
        .unwrap();
        let n = enc.finish();
        buf[..n].to_vec()
    }

    #[test]
    fn checks_are_found_directly_and_inside_relay_framing() {
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let peer: SocketAddr = "127.1.0.1:20000".parse().unwrap();
        let check = binding(Class::Request);
        let answer = binding(Class::Success);
        assert!(carries_check(&check, peer, server));
        assert!(carries_check(&answer, peer, server));
        // The same Binding to the server is gathering, not a check.
        assert!(!carries_check(&check, server, server));
        // Media is not a check.
        assert!(!carries_check(b"LGv1 media", peer, server));

        // Inside ChannelData.
        let ch = ChannelNumber::new(0x4001).unwrap();
        let framed = |payload: &[u8]| {
            let mut h = [0u8; 4];
            write_header(&mut h, ch, payload.len() as u16);
            [&h[..], payload].concat()
        };
        let cd = framed(&check);
        assert!(carries_check(&cd, server, server));
        assert!(!carries_check(&framed(b"LGv1 media"), server, server));

        // Inside a Send indication's DATA.
        let mut buf = [0u8; 256];
        let mut enc = Encoder::new(
            &mut buf,
            MessageType::new(Method::SEND, Class::Indication),
            TransactionId([1; 12]),
        )
        .unwrap();
        enc.add(&Data(&check)).unwrap();
        let n = enc.finish();
        assert!(carries_check(&buf[..n], server, server));

        // Truncations and junk never panic.
        for i in 0..cd.len() {
            let _ = carries_check(&cd[..i], server, server);
            let _ = carries_check(&buf[..i.min(n)], server, server);
        }
    }
}
