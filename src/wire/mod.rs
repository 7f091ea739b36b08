//! Wire formats the upstreams speak: framing and usage readers per wire.
//!
//! `eventstream` splits AWS event-stream bytes (Bedrock's `invoke-with-response-stream`) into
//! whole messages. `json` splices a JSON body's top-level `model`.

pub mod eventstream;
pub mod json;
