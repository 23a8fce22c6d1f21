//! uturn relay library.
