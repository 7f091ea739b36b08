//! What a request may cost before it runs: the bound a key with spend caps reserves at admission
//! (see `filters::LimitBackend::admit`), and the prompt-size estimate `max_input_tokens` checks.
//! No tokenizer: both are read from the body's bytes.
//!
//! - **Reservation** ([`reserve_nanos`]): input tokens bounded by the body's size
//!   ([`input_bound`]: one token per [`BYTES_PER_TOKEN_BOUND`] bytes, JSON syntax, keys and
//!   images included; typical text and code run 3 to 4.5 bytes per token, so the bound counts
//!   about twice the real prompt, which also covers a prompt written to the cache at up to 2× the
//!   input price), plus the request's output limit (`max_tokens`, `max_completion_tokens`,
//!   `max_output_tokens`, `generationConfig.maxOutputTokens`; [`DEFAULT_OUTPUT_TOKENS`] when it
//!   names none), priced at the requested model's price without cache discounts and at its
//!   long-context tier when the bound crosses it. A model without a price reserves nothing.
//! - **Prompt size** ([`prompt_tokens`]): only when the bound exceeds a key's `max_input_tokens`
//!   is the body read for a closer figure: the characters of its string values (not its keys or
//!   syntax), an ASCII character as a quarter token and any other as a whole one, and an inline
//!   image or document (`data` fields, `data:` URLs) as [`INLINE_MEDIA_TOKENS`]. English prose
//!   runs about 4 to 4.5 characters per token and code about 3 to 3.5, so this errs towards
//!   admitting: a code-heavy prompt can exceed the limit by up to a quarter before it is refused,
//!   and a prompt under the limit is not refused for its JSON's size.

use super::TokenUsage;
use super::pricing::PricingTable;

/// Bytes of request body counted as one input token in the reservation's bound.
pub const BYTES_PER_TOKEN_BOUND: u64 = 2;
/// The output a reservation assumes when the request names no limit.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 16_384;
/// What an inline image or document counts as in [`prompt_tokens`] (an image of about a
/// megapixel, the most Claude bills for one).
pub const INLINE_MEDIA_TOKENS: u64 = 1_600;

/// An upper bound of a body's input tokens, from its size alone.
pub fn input_bound(body_len: usize) -> u64 {
    (body_len as u64).div_ceil(BYTES_PER_TOKEN_BOUND)
}

/// The most a request of `model` with a body of `body_len` bytes and the output limit
/// `max_output` is expected to cost (nano-USD); `None` when the model has no price. A request that
/// asks for fast mode is reserved at the model's fast price (the answer may be served fast).
pub fn reserve_nanos(
    pricing: &PricingTable,
    model: &str,
    body_len: usize,
    max_output: Option<u64>,
    fast: bool,
) -> Option<u64> {
    let mut usage = TokenUsage {
        input: input_bound(body_len),
        output: max_output.unwrap_or(DEFAULT_OUTPUT_TOKENS),
        ..TokenUsage::default()
    };
    if fast {
        usage.billing.speed = super::Speed::Fast;
    }
    pricing.cost_nanos(model, &usage)
}

/// The prompt's input tokens for `max_input_tokens` when it may be over `limit`: the cheap bound
/// when it is within the limit, else the closer reading of the body (see the module docs).
pub fn prompt_tokens(body: &[u8], limit: u64) -> u64 {
    let bound = input_bound(body.len());
    if bound <= limit {
        return bound;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let mut count = Count::default();
            count.value(&v, None);
            count.ascii.div_ceil(4) + count.other + count.media * INLINE_MEDIA_TOKENS
        }
        Err(_) => bound,
    }
}

#[derive(Default)]
struct Count {
    ascii: u64,
    other: u64,
    media: u64,
}

impl Count {
    fn value(&mut self, v: &serde_json::Value, key: Option<&str>) {
        match v {
            serde_json::Value::String(s) => {
                if key == Some("data") || s.starts_with("data:") {
                    self.media += 1;
                } else {
                    let ascii = s.bytes().filter(u8::is_ascii).count() as u64;
                    self.ascii += ascii;
                    self.other += s.chars().count() as u64 - ascii;
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| self.value(x, None)),
            serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| self.value(x, Some(k.as_str()))),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reservation_bounds_the_prompt_and_the_output_at_the_models_price() {
        let pricing = PricingTable::builtin().unwrap();
        let price = pricing.lookup("claude-sonnet-4-5").unwrap().clone();
        let nanos = |usd_per_token: f64| usd_per_token * 1e9;
        // 100 bytes: 50 tokens of input; 16 of output.
        let got = reserve_nanos(&pricing, "claude-sonnet-4-5", 100, Some(16), false).unwrap() as f64;
        let want = 50.0 * nanos(price.input) + 16.0 * nanos(price.output);
        assert!((got - want).abs() < 1.0, "{got} vs {want}");
        // No output limit: the default.
        let got = reserve_nanos(&pricing, "claude-sonnet-4-5", 0, None, false).unwrap() as f64;
        assert!((got - DEFAULT_OUTPUT_TOKENS as f64 * nanos(price.output)).abs() < 1.0);
        // A prompt bound over the long-context threshold is priced at the tier.
        if let Some(lc) = &price.long_context {
            let len = (lc.above_tokens as usize + 10) * 2;
            let got = reserve_nanos(&pricing, "claude-sonnet-4-5", len, Some(0), false).unwrap() as f64;
            let want = input_bound(len) as f64 * nanos(lc.input.unwrap_or(price.input));
            assert!((got - want).abs() < 2.0, "{got} vs {want}");
        }
        assert_eq!(reserve_nanos(&pricing, "no-such-model-xyz", 100, Some(16), false), None);
        // Fast mode is reserved at the fast price.
        let standard = reserve_nanos(&pricing, "claude-opus-4-8", 100, Some(16), false).unwrap();
        let fast = reserve_nanos(&pricing, "claude-opus-4-8", 100, Some(16), true).unwrap();
        assert_eq!(fast, standard * 2);
    }

    #[test]
    fn prompt_tokens_reads_text_not_syntax() {
        let text = "word ".repeat(400); // 2000 ASCII characters: 500 tokens
        let body = serde_json::json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": text},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(100_000)}}
            ]}
        ]})
        .to_string();
        // Under a generous limit the cheap bound answers.
        assert_eq!(prompt_tokens(body.as_bytes(), 1_000_000), input_bound(body.len()));
        // Near the limit: the text's quarter-tokens, the image as one image, a little for the
        // other strings.
        let got = prompt_tokens(body.as_bytes(), 1_000);
        assert!(
            (500 + INLINE_MEDIA_TOKENS..500 + INLINE_MEDIA_TOKENS + 10).contains(&got),
            "{got}"
        );
        // Non-ASCII characters count one token each.
        let cjk = serde_json::json!({"messages": [{"role": "user", "content": "漢字".repeat(1000)}]}).to_string();
        let got = prompt_tokens(cjk.as_bytes(), 10);
        assert!((2000..2010).contains(&got), "{got}");
        // A body that is not JSON keeps the bound.
        assert_eq!(prompt_tokens(&[b'x'; 100], 10), 50);
    }
}
