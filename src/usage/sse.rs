//! Incremental usage parsing of Anthropic responses (SSE and JSON).
