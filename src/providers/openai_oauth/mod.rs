//! `openai-oauth` accounts: ChatGPT subscriptions for Codex, connected through OpenAI's sign-in
//! (the flow Codex CLI uses) or imported from Codex's `auth.json`.
//!
//! - [`flow`]: the authorization (PKCE S256, state, a sealed authorization id), the code exchange
//!   and the refresh grant, and the id token's claims (the ChatGPT account id and plan).
//! - [`settings`]: the endpoints, client and timings, as `relay.yaml` sets them.
//! - [`tokens`]: each account's live token, refreshed ahead of expiry by a background task and on
//!   demand when a request meets an expired token or a 401, once at a time per account across
//!   every instance sharing the store (the machinery of [`crate::credentials`] with OpenAI's
//!   refresh grant).
//!
//! Serving ([`super::openai::CodexOAuth`]) sends the request to the Codex backend with
//! `Authorization: Bearer <access token>` and `chatgpt-account-id`; client headers and body are
//! otherwise relayed as sent.

pub mod flow;
pub mod settings;
pub mod tokens;
