//! The TURN server (RFC 8656) as a sans-IO state machine.

pub mod auth;
pub mod policy;

pub use auth::{
    check_nonce, make_nonce, AuthError, Credentials, CredentialsError, Features, Keys, NonceBuf,
    NonceKey, NonceStatus,
};
pub use policy::{Cidr, CidrError, PeerPolicy, PeerPolicyConfig};
