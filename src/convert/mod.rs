//! Stream and body translators between the client's dialect and the upstream's wire.
//!
//! `bedrock_stream` turns Bedrock's `invoke-with-response-stream` event-stream into the Anthropic
//! Messages SSE stream a client of `/v1/messages` expects.

pub mod bedrock_stream;
