//! `ccr` accounts: an Anthropic-compatible upstream such as Claude Code Router, reserved for the
//! requests whose model starts with `ccr,` (`ccr,claude-sonnet-4-5`, `ccr,openrouter/some-model`).
//! The prefix is removed before sending and the client sees its own model name back. Such
//! requests never go to other kinds, nor other requests to CCR (see `scheduler::Account::serves`).

use super::{Call, PrepareError, Prepared, Provider, ProviderEnv, Target, Wire, anthropic};

/// The model prefix that routes a request to CCR accounts.
pub const PREFIX: &str = "ccr,";

/// The provider of `ccr` accounts.
pub struct Ccr;

impl Provider for Ccr {
    fn wire(&self) -> Wire {
        Wire::AnthropicMessages
    }

    fn prepare(&self, _env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        anthropic::prepare(call, target)
    }
}

/// Whether a requested model is meant for CCR.
pub fn is_ccr_model(model: &str) -> bool {
    model
        .get(..PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

/// The model name CCR is asked for: without the prefix.
pub fn strip(model: &str) -> &str {
    if is_ccr_model(model) {
        model[PREFIX.len()..].trim_start()
    } else {
        model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_routes_and_is_removed() {
        assert!(is_ccr_model("ccr,claude-sonnet-4-5"));
        assert!(is_ccr_model("CCR,openrouter/x"));
        assert!(!is_ccr_model("claude-sonnet-4-5"));
        assert!(!is_ccr_model("ccr"));
        assert_eq!(strip("ccr,openrouter/some-model"), "openrouter/some-model");
        assert_eq!(strip("ccr, claude-x"), "claude-x");
        assert_eq!(strip("claude-x"), "claude-x");
    }
}
