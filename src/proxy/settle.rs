//! Settling a request: whatever way it ends (success, error, client disconnect, shutdown), the
//! guard's `Drop` prices the usage seen so far and sends one [`UsageEvent`] to the statistics
//! pipeline, and updates the token and cost metrics.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::usage::pricing::PricingTable;
use crate::usage::stats::UsageSink;
use crate::usage::{TokenUsage, UsageEvent};

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
    /// The cost computed by [`Settle::final_cost_nanos`], if it was.
    priced: Option<Option<u64>>,
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
        let model = self.upstream_model.as_deref().unwrap_or(&self.requested_model);
        let cost = self.pricing.cost_nanos(model, &self.usage);
        self.priced = Some(cost);
        cost
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        let model: Arc<str> = self.upstream_model.as_deref().unwrap_or(&self.requested_model).into();
        let cost = match self.priced {
            Some(c) => c,
            None => self.pricing.cost_nanos(&model, &self.usage),
        };
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
        self.sink.record(UsageEvent {
            at: chrono::Utc::now().timestamp(),
            key_id: self.key_id.clone(),
            account_id: self.account_id.clone(),
            model,
            usage: self.usage,
            cost_nanos: cost,
            is_error: self.is_error,
            model_known: self.model_known,
        });
    }
}
