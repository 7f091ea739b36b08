//! Wire formats the upstreams speak: framing and usage readers per wire.
//!
//! `eventstream` splits AWS event-stream bytes (Bedrock's `invoke-with-response-stream`) into
//! whole messages.

pub mod eventstream;
