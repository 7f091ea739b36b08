//! claude-relay: a self-hosted AI API relay on Pingora.
//!
//! Module map (see `docs/architecture.md` and `docs/phases.md`): `config` reads and validates
//! `relay.yaml`; `server` assembles the Pingora server; `proxy` is the client-facing relay
//! (connection limits, body facts, the attempt loop, streaming); `ingress` knows each client
//! dialect (routes, error shapes); `providers` knows how each upstream kind is addressed and
//! authenticated; `scheduler` picks accounts and judges attempts; `store` persists state; `usage`
//! turns tokens into money and statistics; `admin` serves the management API; `metrics` the
//! Prometheus registry.
//! `wire` frames what an upstream sends on its own wire (AWS event-stream for Bedrock), and
//! `convert` translates between that wire and the client's dialect.
//! Leaves that every layer may use: `lifecycle` (whether the process is handing over, the
//! shutdown token, the owner of every background task), `net` (client addresses behind trusted
//! proxies), `logging` (redacted log output), `private_fs` (files only the relay's user may read).

pub mod accounts;
pub mod admin;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod ingress;
pub mod leases;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod private_fs;
pub mod providers;
pub mod proxy;
pub mod scheduler;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod types;
pub mod usage;
pub mod wire;

#[cfg(test)]
pub(crate) mod test_props;
