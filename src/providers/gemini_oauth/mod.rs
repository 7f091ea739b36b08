//! `gemini-oauth` accounts: Google accounts for Gemini Code Assist, connected through Google's
//! sign-in (the flow Gemini CLI uses) or imported from Gemini CLI's `oauth_creds.json`.
//!
//! - [`flow`]: the authorization (PKCE S256, state, offline access, a sealed authorization id),
//!   the code exchange and the refresh grant, and the e-mail the id token names.
//! - [`settings`]: the endpoints, client and timings, as `relay.yaml` sets them.
//! - [`tokens`]: each account's live token, refreshed ahead of expiry by a background task and on
//!   demand when a request meets an expired token or a 401, once at a time per account across
//!   every instance sharing the store (the machinery of [`crate::credentials`] with Google's
//!   refresh grant).
//! - [`project`]: each account's Code Assist project, found once (`loadCodeAssist`, or
//!   `onboardUser`) when its settings name none, and kept with its tokens.
//!
//! Serving ([`super::gemini::CodeAssist`]) sends the request to Code Assist with
//! `Authorization: Bearer <access token>` and the account's project in the body.

pub mod flow;
pub mod project;
pub mod settings;
pub mod tokens;
