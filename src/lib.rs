//! uturn relay library.
pub mod driver;
