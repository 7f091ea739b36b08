//! The embedded store (redb).
