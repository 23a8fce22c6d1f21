//! `--nat SPEC`: which NAT each emulated network sits behind.
//!
//! ```text
//! SPEC     := (BEHAVIOR | ALIAS | "mix" | "none") [":timeout=" DURATION]
//! BEHAVIOR := MAPPING "-" FILTERING
//! MAPPING  := "eim" | "adm" | "apdm"     endpoint-independent, address-dependent,
//!                                        address-and-port-dependent mapping (RFC 4787 4.1)
//! FILTERING:= "eif" | "adf" | "apdf"     the same three for filtering (RFC 4787 5)
//! ALIAS    := "full-cone"       = eim-eif     (RFC 3489 names, RFC 4787 section 3)
//!           | "restricted-cone" = eim-adf
//!           | "port-restricted" = eim-apdf
//!           | "symmetric"       = apdm-apdf
//! ```
//! `mix` draws a behaviour uniformly from the nine per network; `none` puts agents straight on
//! loopback addresses. The timeout defaults to [`DEFAULT_TIMEOUT`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

use super::{Filtering, Mapping, NatBehavior, DEFAULT_TIMEOUT};
use crate::duration;

/// A parsed `--nat`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NatSpec {
    /// No NAT: agents have real loopback addresses.
    None,
    /// Every network behind the same behaviour.
    Fixed(NatBehavior),
    /// Each network behind a behaviour drawn at random, with this mapping timeout.
    Mix { timeout: Duration },
}

/// Why a spec did not parse; the message lists what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown NAT `{0}`: expected MAPPING-FILTERING with MAPPING in eim, adm, apdm and FILTERING in eif, adf, apdf (e.g. eim-apdf), an alias (full-cone, restricted-cone, port-restricted, symmetric), mix or none")]
    Unknown(String),
    #[error("unknown NAT option `{0}`: the only option is timeout=DURATION")]
    Option(String),
    #[error("NAT timeout: {0}")]
    Timeout(#[from] duration::DurationError),
    #[error("NAT timeout must be positive")]
    ZeroTimeout,
    #[error("`none` takes no options")]
    NoneWithOptions,
}

fn mapping(s: &str) -> Option<Mapping> {
    Mapping::ALL.into_iter().find(|m| m.short() == s)
}

fn filtering(s: &str) -> Option<Filtering> {
    Filtering::ALL.into_iter().find(|f| f.short() == s)
}

fn alias(s: &str) -> Option<(Mapping, Filtering)> {
    use Filtering as F;
    use Mapping as M;
    Some(match s {
        "full-cone" => (M::EndpointIndependent, F::EndpointIndependent),
        "restricted-cone" => (M::EndpointIndependent, F::AddressDependent),
        "port-restricted" => (M::EndpointIndependent, F::AddressAndPortDependent),
        "symmetric" => (M::AddressAndPortDependent, F::AddressAndPortDependent),
        _ => return None,
    })
}

impl FromStr for NatSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let lower = s.trim().to_ascii_lowercase();
        let mut parts = lower.split(':');
        let head = parts.next().unwrap_or_default();
        let mut timeout = DEFAULT_TIMEOUT;
        let mut has_options = false;
        for opt in parts {
            has_options = true;
            match opt.split_once('=') {
                Some(("timeout", v)) => {
                    timeout = duration::parse(v)?;
                    if timeout.is_zero() {
                        return Err(SpecError::ZeroTimeout);
                    }
                }
                _ => return Err(SpecError::Option(opt.into())),
            }
        }
        match head {
            "none" if has_options => Err(SpecError::NoneWithOptions),
            "none" => Ok(NatSpec::None),
            "mix" => Ok(NatSpec::Mix { timeout }),
            _ => {
                let (m, f) = alias(head)
                    .or_else(|| {
                        let (m, f) = head.split_once('-')?;
                        Some((mapping(m)?, filtering(f)?))
                    })
                    .ok_or_else(|| SpecError::Unknown(s.into()))?;
                Ok(NatSpec::Fixed(NatBehavior {
                    mapping: m,
                    filtering: f,
                    timeout,
                }))
            }
        }
    }
}

impl fmt::Display for NatSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatSpec::None => f.write_str("none"),
            NatSpec::Fixed(b) => write!(f, "{b}:timeout={}", duration::format(b.timeout)),
            NatSpec::Mix { timeout } => write!(f, "mix:timeout={}", duration::format(*timeout)),
        }
    }
}

impl NatSpec {
    /// The behaviour of the next network: fixed, drawn at random for `mix`, none for `none`.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<NatBehavior> {
        match *self {
            NatSpec::None => None,
            NatSpec::Fixed(b) => Some(b),
            NatSpec::Mix { timeout } => Some(NatBehavior {
                mapping: Mapping::ALL[rng.gen_range(0..3)],
                filtering: Filtering::ALL[rng.gen_range(0..3)],
                timeout,
            }),
        }
    }
}
