//! The STUN message type: method and class interleaved into 14 bits (RFC 8489 section 5).

use core::fmt;

/// A 12-bit STUN method.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Method(u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    // RFC 8656 section 17.
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    // RFC 6062 section 6.1.
    pub const CONNECT: Method = Method(0x00A);
    pub const CONNECTION_BIND: Method = Method(0x00B);
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);

    /// A method from its 12-bit number; `None` if it does not fit in 12 bits.
    pub const fn new(n: u16) -> Option<Method> {
        if n <= 0x0FFF {
            Some(Method(n))
        } else {
            None
        }
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    pub const fn name(self) -> &'static str {
        match self.0 {
            0x001 => "binding",
            0x003 => "allocate",
            0x004 => "refresh",
            0x006 => "send",
            0x007 => "data",
            0x008 => "create_permission",
            0x009 => "channel_bind",
            0x00A => "connect",
            0x00B => "connection_bind",
            0x00C => "connection_attempt",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Method({:#05x} {})", self.0, self.name())
    }
}

/// The two class bits.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// Method and class together: the first 16 bits of a STUN header.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageType {
    pub method: Method,
    pub class: Class,
}

impl MessageType {
    pub const fn new(method: Method, class: Class) -> Self {
        MessageType { method, class }
    }

    /// Decodes the 16-bit type field. The caller has checked that the two leading bits are zero.
    ///
    /// Layout (RFC 8489 figure 3): `M11..M7 C1 M6..M4 C0 M3..M0`.
    pub const fn from_u16(v: u16) -> Self {
        let m = (v & 0x000F) | ((v & 0x00E0) >> 1) | ((v & 0x3E00) >> 2);
        let c = ((v & 0x0010) >> 4) | ((v & 0x0100) >> 7);
        let class = match c {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        };
        MessageType {
            method: Method(m),
            class,
        }
    }

    pub const fn to_u16(self) -> u16 {
        let m = self.method.0;
        let c = self.class.bits();
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }
}

/// The 96-bit transaction id. Requests pick it at random; responses echo it.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransactionId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_type_values() {
        // RFC 8489 section 5: Binding request 0x0001, success 0x0101, error 0x0111.
        let b = Method::BINDING;
        assert_eq!(MessageType::new(b, Class::Request).to_u16(), 0x0001);
        assert_eq!(MessageType::new(b, Class::Success).to_u16(), 0x0101);
        assert_eq!(MessageType::new(b, Class::Error).to_u16(), 0x0111);
        assert_eq!(MessageType::new(b, Class::Indication).to_u16(), 0x0011);
        // RFC 8656: Send indication 0x0016, Data indication 0x0017, Allocate request 0x0003.
        assert_eq!(
            MessageType::new(Method::SEND, Class::Indication).to_u16(),
            0x0016
        );
        assert_eq!(
            MessageType::new(Method::DATA, Class::Indication).to_u16(),
            0x0017
        );
    }

    #[test]
    fn every_type_round_trips() {
        for v in 0u16..0x4000 {
            assert_eq!(MessageType::from_u16(v).to_u16(), v);
        }
    }
}
