//! sans-IO ICE agent (RFC 8445).
