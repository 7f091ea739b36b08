//! The model price table and cost computation.
