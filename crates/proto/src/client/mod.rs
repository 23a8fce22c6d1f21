//! Placeholder: the sans-IO STUN/TURN client lands here.
