//! claude-relay: a self-hosted AI API relay on Pingora.
//!
//! Module map (see `docs/architecture.md` and `docs/phases.md`), bottom up; imports point down,
//! and `tests/layering.rs` holds the table of what each module may import:
//! - Leaves that every layer may use: `lifecycle` (whether the process is handing over, the
//!   shutdown token, the owner of every background task), `secrets` (sealing, key hashes),
//!   `private_fs` (files only the relay's user may read), `net` (client addresses behind trusted
//!   proxies), `logging` (redacted log output), `metrics` (the Prometheus registry), `types`
//!   (value types several layers share: durations, cooldown classes), `outbound` (per-account
//!   SOCKS5 and HTTP CONNECT proxies), `tls` (the listeners' certificates, reloaded when their
//!   files change), `alert_events` (the alerts lower layers raise,
//!   queued for the dispatcher).
//! - `store` persists state; `leases` and `limits` build on it; `usage` turns tokens into money
//!   and statistics; `wire` frames what an upstream sends on its own wire (AWS event-stream).
//! - `credentials`: refreshing tokens shared by every OAuth provider (token cell, single-flight
//!   refresh, cross-instance lock, persist before release).
//! - `providers` knows how each upstream kind is addressed and authenticated; `convert`
//!   translates between a wire and the client's dialect; `ingress` knows each client dialect
//!   (routes, error shapes); `accounts` is the one account type of `relay.yaml`, the store and
//!   the admin API, checked once.
//! - `crs` imports Claude Relay Service's Redis (keys, accounts, groups, usage) into the store.
//! - `scheduler` picks accounts and judges attempts (its accounts hold their provider's
//!   credential, so it sits above `providers`).
//! - `config` reads and validates `relay.yaml`; `state` builds the hot-path snapshot of keys and
//!   accounts.
//! - `backup` makes and restores backups of the store (and writes the scheduled ones).
//! - `proxy` is the client-facing relay (connection limits, body facts, the attempt loop,
//!   streaming); `alerts` checks thresholds and delivers alerts to webhooks; `admin` serves the management API; `server` assembles the Pingora server.

pub mod accounts;
pub mod admin;
pub mod alert_events;
pub mod alerts;
pub mod backup;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod crs;
pub mod ingress;
pub mod leases;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod panel;
pub mod private_fs;
pub mod providers;
pub mod proxy;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod types;
pub mod usage;
pub mod wire;

#[cfg(test)]
pub(crate) mod test_props;
