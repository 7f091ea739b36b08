//! The contract every store backend passes.
