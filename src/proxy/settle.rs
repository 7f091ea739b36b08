//! Settling a request: whatever way it ends (success, error, client disconnect, shutdown), the
//! guard's `Drop` prices the usage seen so far and sends one [`UsageEvent`] to the statistics
//! pipeline, and updates the token and cost metrics.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::usage::pricing::{Cost, PricingTable};
use crate::usage::sessions::SessionTag;
use crate::usage::stats::UsageSink;
use crate::usage::{Speed, TokenUsage, UsageEvent};

pub struct Settle {
    sink: UsageSink,
    pricing: Arc<PricingTable>,
    metrics: Arc<Metrics>,
    key_id: Arc<str>,
    requested_model: String,
    pub account_id: Option<Arc<str>>,
    /// The serving account's runtime, charged for its daily quota.
    pub account_rt: Option<Arc<crate::scheduler::AccountRuntime>>,
    pub upstream_model: Option<String>,
    /// The serving account's configuration names the model.
    pub model_known: bool,
    pub usage: TokenUsage,
    pub is_error: bool,
    /// The client session and agent of the request, when it named one.
    pub session: Option<SessionTag>,
    /// The request asked for fast mode (`speed: "fast"` in a Messages body): an answer whose
    /// usage names no speed is not known to be standard.
    pub asked_fast: bool,
    /// The cost computed by [`Settle::final_cost_nanos`], if it was.
    priced: Option<Option<Cost>>,
}

impl Settle {
    pub fn new(
        sink: UsageSink,
        pricing: Arc<PricingTable>,
        metrics: Arc<Metrics>,
        key_id: Arc<str>,
        requested_model: String,
    ) -> Self {
        Settle {
            sink,
            pricing,
            metrics,
            key_id,
            requested_model,
            account_id: None,
            account_rt: None,
            upstream_model: None,
            model_known: false,
            usage: TokenUsage::default(),
            is_error: false,
            session: None,
            asked_fast: false,
            priced: None,
        }
    }
}

impl Settle {
    /// The cost of the usage seen so far, while it may still grow (`None` when the model has no
    /// price).
    pub fn running_cost_nanos(&self) -> Option<u64> {
        let model = self.upstream_model.as_deref().unwrap_or(&self.requested_model);
        self.pricing.cost_nanos(model, &self.usage)
    }

    /// The cost of the usage seen so far (`None` when the model has no price). Once asked, the
    /// usage is final: settling reuses this figure instead of pricing again.
    pub fn final_cost_nanos(&mut self) -> Option<u64> {
        let cost = self.cost();
        self.priced = Some(cost);
        cost.map(|c| c.nanos)
    }

    fn cost(&mut self) -> Option<Cost> {
        if self.asked_fast && self.usage.billing.speed == Speed::Unreported && !self.usage.is_zero() {
            // Fast mode was asked for and the answer does not say it was not granted.
            self.usage.billing.speed = Speed::Unknown;
        }
        let model = self.upstream_model.as_deref().unwrap_or(&self.requested_model);
        self.pricing.cost(model, &self.usage)
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        let model: Arc<str> = self.upstream_model.as_deref().unwrap_or(&self.requested_model).into();
        let priced = match self.priced {
            Some(c) => c,
            None => self.cost(),
        };
        let cost = priced.map(|c| c.nanos);
        let unpriced = priced.map(|c| c.unpriced).unwrap_or_default();
        if !unpriced.is_empty() {
            for part in unpriced.names() {
                self.metrics.unpriced_usage.with_label_values(&[part]).inc();
            }
            tracing::debug!(
                model = %model,
                unpriced = %unpriced,
                "usage reported what the price table has no price for; its cost is counted without it"
            );
        }
        // Metrics label only names models the price table knows, so label sets stay bounded;
        // the rest share the statistics' bucket name.
        let label = if cost.is_some() {
            &*model
        } else {
            crate::usage::stats::OTHER_MODEL
        };
        let u = &self.usage;
        for (kind, n) in [
            ("input", u.input),
            ("output", u.output),
            ("cache_read", u.cache_read),
            ("cache_write_5m", u.cache_write_5m),
            ("cache_write_1h", u.cache_write_1h),
        ] {
            if n > 0 {
                self.metrics.tokens.with_label_values(&[kind, label]).inc_by(n);
            }
        }
        if let Some(c) = cost {
            self.metrics.cost_usd_nanos.with_label_values(&[label]).inc_by(c);
            if let Some(rt) = &self.account_rt {
                rt.add_spend(c);
            }
        }
        if let Some(t) = &self.session {
            self.metrics
                .session_requests
                .with_label_values(&[t.agent_label()])
                .inc();
        }
        self.sink.record(UsageEvent {
            at: chrono::Utc::now().timestamp(),
            key_id: self.key_id.clone(),
            account_id: self.account_id.clone(),
            model,
            usage: self.usage,
            cost_nanos: cost,
            unpriced,
            is_error: self.is_error,
            model_known: self.model_known,
            session: self.session.take(),
        });
    }
}
