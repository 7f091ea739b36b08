//! The model price table and cost computation.
//!
//! Prices come from `conf/pricing.json` (generated from LiteLLM's table by
//! `scripts/gen-pricing.py`), in USD per token. Costs are integer nano-USD so that sums never
//! drift. Model names as sent by clients and upstreams vary (`claude-sonnet-4-5-20250929`,
//! `us.anthropic.claude-sonnet-4-5-20250929-v1:0`, `claude-sonnet-4-5@20250929`,
//! `claude-opus-4-1[1m]`); every normalised alias is computed once at load, so a lookup is at most
//! four hash probes and never a scan.
//!
//! File format: `{"_source": "...", "models": {"<name>": {"input": .., "output": .., "cache_read":
//! .., "cache_write_5m": .., "cache_write_1h": .., "input_above_200k": .., ...}}}`. `input` and
//! `output` are required; a long-context tier is `<kind>_above_<N>k` (N thousand prompt tokens:
//! 200 for Claude and Gemini, 272 for GPT-5.x), one threshold per model. Three optional fields
//! price what Anthropic's usage object reports beside tokens: `fast_multiplier` (fast mode,
//! `usage.speed: "fast"`), `geo_us_multiplier` (US-only inference, `usage.inference_geo: "us"`),
//! both multiplying every token price, tier included, and stacking; and `web_search` (USD per
//! search, `usage.server_tool_use.web_search_requests`).
//!
//! What the table cannot price is never priced as free: a model without a price makes the cost
//! unknown (`None`), and a priced model's usage that reports something without a price here
//! (fast mode or US inference on a model without its multiplier, web searches without a search
//! price, another server tool, a service tier other than standard, a speed or geography the
//! relay does not know) is priced without it and flagged in [`Cost::unpriced`].

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{Geo, ServiceTier, Speed, TokenUsage};

/// Fallback prices, as multiples of the input price, for models whose entry lacks them.
const CACHE_READ_RATIO: f64 = 0.1;
const CACHE_WRITE_5M_RATIO: f64 = 1.25;
const CACHE_WRITE_1H_RATIO: f64 = 2.0;

/// Prices of one model, USD per token.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrice {
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write_5m: Option<f64>,
    pub cache_write_1h: Option<f64>,
    /// Prices once the prompt is long (Claude and Gemini above 200k tokens, GPT-5 above 272k).
    pub long_context: Option<LongContextPrice>,
    /// Multiplier of every token price in fast mode (`usage.speed: "fast"`).
    pub fast_multiplier: Option<f64>,
    /// Multiplier of every token price for US-only inference (`usage.inference_geo: "us"`).
    pub geo_us_multiplier: Option<f64>,
    /// USD per server-side web search.
    pub web_search: Option<f64>,
}

/// The long-context tier of a model: applies to a request whose prompt-side tokens
/// ([`TokenUsage::total_input`]) exceed `above_tokens`, for each token kind it prices.
#[derive(Debug, Clone, PartialEq)]
pub struct LongContextPrice {
    pub above_tokens: u64,
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub cache_read: Option<f64>,
    pub cache_write_5m: Option<f64>,
    pub cache_write_1h: Option<f64>,
}

impl ModelPrice {
    /// Cost of `u` in nano-USD (1e-9 USD), rounded to the nearest unit, without what the prices
    /// leave unpriced (see [`ModelPrice::cost`]).
    pub fn cost_nanos(&self, u: &TokenUsage) -> u64 {
        Rates::of(self).cost(u).nanos
    }

    /// Cost of `u`, and what of it these prices cannot price.
    pub fn cost(&self, u: &TokenUsage) -> Cost {
        Rates::of(self).cost(u)
    }
}

/// The cost of one response's usage: what the table prices, and the parts it has no price for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// nano-USD (1e-9 USD), rounded to the nearest unit; without the parts in `unpriced`.
    pub nanos: u64,
    pub unpriced: Unpriced,
}

/// Parts of a response's usage that were billed upstream but have no price in the table, so the
/// cost counted leaves them out (a set of flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Unpriced(u8);

impl Unpriced {
    /// Fast mode on a model without a fast price, or a speed the relay does not know (or none
    /// reported for a request that asked for fast mode).
    pub const SPEED: Unpriced = Unpriced(1);
    /// US-only inference on a model without its multiplier, or a geography the relay does not know.
    pub const GEO: Unpriced = Unpriced(2);
    /// A service tier other than standard (`priority`, `batch`, unknown).
    pub const SERVICE_TIER: Unpriced = Unpriced(4);
    /// Web searches on a model without a search price.
    pub const WEB_SEARCH: Unpriced = Unpriced(8);
    /// Server tool uses other than web search and web fetch (code execution, unknown kinds).
    pub const SERVER_TOOL: Unpriced = Unpriced(16);

    const NAMES: [(Unpriced, &'static str); 5] = [
        (Unpriced::SPEED, "speed"),
        (Unpriced::GEO, "inference_geo"),
        (Unpriced::SERVICE_TIER, "service_tier"),
        (Unpriced::WEB_SEARCH, "web_search"),
        (Unpriced::SERVER_TOOL, "server_tool_use"),
    ];

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Unpriced) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Unpriced) {
        self.0 |= other.0;
    }

    /// The usage fields left unpriced, by name (`speed`, `inference_geo`, `service_tier`,
    /// `web_search`, `server_tool_use`).
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Unpriced::NAMES
            .into_iter()
            .filter(move |(flag, _)| self.contains(*flag))
            .map(|(_, name)| name)
    }
}

impl std::fmt::Display for Unpriced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("cannot read pricing file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pricing table is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pricing table, model {model:?}: {reason}")]
    Model { model: String, reason: String },
}

/// Every model's price, with its name aliases resolved at load.
#[derive(Debug, Clone)]
pub struct PricingTable {
    source: Option<String>,
    entries: Vec<Entry>,
    /// Table names and their normalised aliases → index into `entries`.
    index: HashMap<Box<str>, Alias>,
}

#[derive(Debug, Clone)]
struct Entry {
    name: Box<str>,
    price: ModelPrice,
    rates: Rates,
}

#[derive(Debug, Clone, Copy)]
struct Alias {
    entry: usize,
    rank: Rank,
}

/// How an index name relates to its entry; a lower rank wins when two entries claim a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// The entry's own name in the table.
    Exact,
    /// The entry's name normalised (prefixes, regions, version suffixes, `@date` removed).
    Normalised,
    /// The undated name of the only dated entry of that model.
    UniqueDated,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    #[serde(rename = "_source", default)]
    source: Option<String>,
    models: HashMap<String, HashMap<String, f64>>,
}

impl PricingTable {
    /// The model names of the table, sorted.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| &*e.name)
    }

    /// Parses the `conf/pricing.json` format.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PricingError> {
        let file: PricingFile = serde_json::from_slice(bytes)?;
        let mut models: Vec<(String, HashMap<String, f64>)> = file.models.into_iter().collect();
        // Sorted, so that alias ties resolve the same way on every load.
        models.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries = Vec::with_capacity(models.len());
        for (name, fields) in models {
            let price = parse_model(&name, &fields)?;
            let rates = Rates::of(&price);
            entries.push(Entry {
                name: name.into_boxed_str(),
                price,
                rates,
            });
        }
        let index = build_index(&entries);
        Ok(PricingTable {
            source: file.source,
            entries,
            index,
        })
    }

    /// Reads a pricing file in the `conf/pricing.json` format.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PricingError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| PricingError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&bytes)
    }

    /// The table compiled into the binary, used when no pricing file is configured.
    pub fn builtin() -> Result<Self, PricingError> {
        Self::from_json(include_bytes!("../../conf/pricing.json"))
    }

    /// The `_source` note of the file.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Number of priced models (table entries, not aliases).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The price of `model`: its exact table entry; else the entry of the name without case,
    /// `[1m]` suffix or provider path (`bedrock/us.anthropic.…-v1:0` keeps its regional price);
    /// else of its fully normalised name (region, vendor, version and `@date` forms, and the
    /// undated name of a model with a single dated entry); else, for a dated name, of its undated
    /// name; else `None`.
    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        self.resolve(model).map(|e| &e.price)
    }

    /// The table name `model` resolves to, for logs and the admin panel.
    pub fn resolved_name(&self, model: &str) -> Option<&str> {
        self.resolve(model).map(|e| &*e.name)
    }

    /// Cost of `u` for `model` in nano-USD (1e-9 USD), rounded to nearest; `None` when the model
    /// has no price. Parts of the usage without a price are left out (see [`PricingTable::cost`]).
    pub fn cost_nanos(&self, model: &str, u: &TokenUsage) -> Option<u64> {
        self.cost(model, u).map(|c| c.nanos)
    }

    /// Cost of `u` for `model`, and what of it the table cannot price; `None` when the model has
    /// no price.
    pub fn cost(&self, model: &str, u: &TokenUsage) -> Option<Cost> {
        self.resolve(model).map(|e| e.rates.cost(u))
    }

    fn resolve(&self, model: &str) -> Option<&Entry> {
        if let Some(alias) = self.index.get(model) {
            return self.entries.get(alias.entry);
        }
        let plain = strip_decoration(model);
        if plain != model
            && let Some(alias) = self.index.get(plain.as_str())
        {
            return self.entries.get(alias.entry);
        }
        let normalised = normalise(&plain);
        if normalised != plain
            && let Some(alias) = self.index.get(normalised.as_str())
        {
            return self.entries.get(alias.entry);
        }
        // A dated name falls back to its undated entry, but not to another date of it.
        let undated = strip_date(&normalised)?;
        match self.index.get(undated) {
            Some(alias) if alias.rank <= Rank::Normalised => self.entries.get(alias.entry),
            _ => None,
        }
    }
}

/// Which token kind a pricing field prices.
#[derive(Clone, Copy)]
enum Kind {
    Input,
    Output,
    CacheRead,
    CacheWrite5m,
    CacheWrite1h,
}

fn kind_of(field: &str) -> Option<Kind> {
    Some(match field {
        "input" => Kind::Input,
        "output" => Kind::Output,
        "cache_read" => Kind::CacheRead,
        "cache_write_5m" => Kind::CacheWrite5m,
        "cache_write_1h" => Kind::CacheWrite1h,
        _ => return None,
    })
}

fn parse_model(name: &str, fields: &HashMap<String, f64>) -> Result<ModelPrice, PricingError> {
    let err = |reason: String| PricingError::Model {
        model: name.to_owned(),
        reason,
    };
    let mut base = [None; 5];
    let mut tier = [None; 5];
    let mut threshold: Option<u64> = None;
    let (mut fast_multiplier, mut geo_us_multiplier, mut web_search) = (None, None, None);
    for (field, &value) in fields {
        if !value.is_finite() || value < 0.0 {
            return Err(err(format!("{field} must be a non-negative number")));
        }
        let extra = match field.as_str() {
            "fast_multiplier" => Some(&mut fast_multiplier),
            "geo_us_multiplier" => Some(&mut geo_us_multiplier),
            "web_search" => Some(&mut web_search),
            _ => None,
        };
        if let Some(slot) = extra {
            *slot = Some(value);
            continue;
        }
        let (kind, slot) = match field.split_once("_above_") {
            None => (kind_of(field), &mut base),
            Some((kind, above)) => {
                let thousands = above
                    .strip_suffix('k')
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| err(format!("unknown field {field:?}")))?;
                let above_tokens = thousands.saturating_mul(1000);
                if threshold.is_some_and(|t| t != above_tokens) {
                    return Err(err("more than one long-context threshold".to_owned()));
                }
                threshold = Some(above_tokens);
                (kind_of(kind), &mut tier)
            }
        };
        let kind = kind.ok_or_else(|| err(format!("unknown field {field:?}")))?;
        slot[kind as usize] = Some(value);
    }
    let [input, output, cache_read, cache_write_5m, cache_write_1h] = base;
    let input = input.ok_or_else(|| err("missing field \"input\"".to_owned()))?;
    let output = output.ok_or_else(|| err("missing field \"output\"".to_owned()))?;
    let long_context = threshold.map(|above_tokens| {
        let [input, output, cache_read, cache_write_5m, cache_write_1h] = tier;
        LongContextPrice {
            above_tokens,
            input,
            output,
            cache_read,
            cache_write_5m,
            cache_write_1h,
        }
    });
    Ok(ModelPrice {
        input,
        output,
        cache_read,
        cache_write_5m,
        cache_write_1h,
        long_context,
        fast_multiplier,
        geo_us_multiplier,
        web_search,
    })
}

/// A model's prices resolved for computing: nano-USD per token, fallbacks applied.
#[derive(Debug, Clone, Copy)]
struct Rates {
    base: [f64; 5],
    /// Threshold and the rates above it.
    long: Option<(u64, [f64; 5])>,
    fast: Option<f64>,
    geo_us: Option<f64>,
    /// nano-USD per web search.
    web_search: Option<f64>,
}

impl Rates {
    fn of(p: &ModelPrice) -> Self {
        let base = resolve_rates(p.input, p.output, [p.cache_read, p.cache_write_5m, p.cache_write_1h]);
        let long = p.long_context.as_ref().map(|lc| {
            let input = lc.input.unwrap_or(p.input);
            // A kind the tier does not price keeps its base price; a kind priced nowhere falls
            // back to a ratio of the tier's input price.
            let rates = resolve_rates(
                input,
                lc.output.unwrap_or(p.output),
                [
                    lc.cache_read.or(p.cache_read),
                    lc.cache_write_5m.or(p.cache_write_5m),
                    lc.cache_write_1h.or(p.cache_write_1h),
                ],
            );
            (lc.above_tokens, rates)
        });
        Rates {
            base,
            long,
            fast: p.fast_multiplier,
            geo_us: p.geo_us_multiplier,
            web_search: p.web_search.map(nanos),
        }
    }

    fn cost(&self, u: &TokenUsage) -> Cost {
        let b = &u.billing;
        let mut unpriced = Unpriced::default();
        // Fast mode and US-only inference multiply every token price, and each other.
        let mut multiplier = 1.0;
        match b.speed {
            Speed::Unreported | Speed::Standard => {}
            Speed::Fast => match self.fast {
                Some(m) => multiplier *= m,
                None => unpriced.insert(Unpriced::SPEED),
            },
            Speed::Unknown => unpriced.insert(Unpriced::SPEED),
        }
        match b.geo {
            Geo::Global => {}
            Geo::Us => match self.geo_us {
                Some(m) => multiplier *= m,
                None => unpriced.insert(Unpriced::GEO),
            },
            Geo::Unknown => unpriced.insert(Unpriced::GEO),
        }
        if b.tier == ServiceTier::Other {
            unpriced.insert(Unpriced::SERVICE_TIER);
        }
        // As `TokenUsage::total_input`, but upstream numbers must not be able to overflow it.
        let prompt = [u.input, u.cache_read, u.cache_write_5m, u.cache_write_1h]
            .into_iter()
            .fold(0u64, u64::saturating_add);
        let rates = match self.long {
            Some((above, ref long)) if prompt > above => long,
            _ => &self.base,
        };
        let tokens = [u.input, u.output, u.cache_read, u.cache_write_5m, u.cache_write_1h];
        let mut total: f64 = tokens.iter().zip(rates).map(|(&t, &rate)| t as f64 * rate).sum::<f64>() * multiplier;
        if b.web_searches > 0 {
            match self.web_search {
                Some(each) => total += b.web_searches as f64 * each,
                None => unpriced.insert(Unpriced::WEB_SEARCH),
            }
        }
        // Web fetches cost nothing beyond their tokens; other server tools have no price here.
        if b.other_server_tools > 0 {
            unpriced.insert(Unpriced::SERVER_TOOL);
        }
        Cost {
            // Saturating conversion; f64 is exact for integers up to 2^53 nano-USD (9M USD).
            nanos: total.round() as u64,
            unpriced,
        }
    }
}

fn resolve_rates(input: f64, output: f64, cache: [Option<f64>; 3]) -> [f64; 5] {
    let [read, write_5m, write_1h] = cache;
    [
        nanos(input),
        nanos(output),
        nanos(read.unwrap_or(input * CACHE_READ_RATIO)),
        nanos(write_5m.unwrap_or(input * CACHE_WRITE_5M_RATIO)),
        nanos(write_1h.unwrap_or(input * CACHE_WRITE_1H_RATIO)),
    ]
}

/// USD per token → nano-USD per token, rounded to 1e-6 nano so that binary noise such as
/// `3.75e-6 * 1e9 = 3750.0000000000005` does not tip a rounding.
fn nanos(usd_per_token: f64) -> f64 {
    (usd_per_token * 1e15).round() / 1e6
}

fn build_index(entries: &[Entry]) -> HashMap<Box<str>, Alias> {
    let mut index: HashMap<Box<str>, Alias> = HashMap::with_capacity(entries.len() * 3);
    for (i, e) in entries.iter().enumerate() {
        claim(&mut index, entries, &e.name, i, Rank::Exact);
    }
    for (i, e) in entries.iter().enumerate() {
        claim(&mut index, entries, &normalise(&e.name), i, Rank::Normalised);
    }
    // Undated name → its dated names, counting distinct dated names rather than entries: the
    // same snapshot listed by several providers is still one candidate.
    let mut dated: HashMap<Box<str>, Vec<Box<str>>> = HashMap::new();
    for name in index.keys() {
        if let Some(undated) = strip_date(name) {
            dated.entry(undated.into()).or_default().push(name.clone());
        }
    }
    for (undated, names) in dated {
        if let [only] = names.as_slice()
            && let Some(&Alias { entry, .. }) = index.get(only)
        {
            claim(&mut index, entries, &undated, entry, Rank::UniqueDated);
        }
    }
    index
}

/// Points `name` at entry `i` unless a better claim holds it: a lower rank, then (for names
/// normalised from several entries, such as `us.` and `eu.` variants of one Bedrock model) the
/// shorter table name, which is the one without a region or platform prefix.
fn claim(index: &mut HashMap<Box<str>, Alias>, entries: &[Entry], name: &str, i: usize, rank: Rank) {
    let key = |a: &Alias| {
        let n = entries.get(a.entry).map_or("", |e| &*e.name);
        (a.rank, n.len(), n)
    };
    let new = Alias { entry: i, rank };
    match index.get_mut(name) {
        None => {
            index.insert(name.into(), new);
        }
        Some(old) => {
            if key(&new) < key(old) {
                *old = new;
            }
        }
    }
}

/// A model name without what never names a different price: surrounding space, letter case, a
/// `[1m]`-style suffix, and a provider or platform path (`anthropic/`, `bedrock/us-east-1/`,
/// `vertex_ai/`). A Bedrock id stays whole, since regional endpoints are priced apart.
fn strip_decoration(model: &str) -> String {
    let mut s = model.trim();
    if s.ends_with(']')
        && let Some(open) = s.rfind('[')
    {
        s = &s[..open];
    }
    if let Some(slash) = s.rfind('/') {
        s = &s[slash + 1..];
    }
    s.to_ascii_lowercase()
}

/// The canonical form of a model name: [`strip_decoration`], then without a Bedrock region and
/// vendor prefix (`us.anthropic.`), a Bedrock version suffix (`-v1:0`), or a Vertex `@default`;
/// a Vertex `@20250929` becomes `-20250929`.
fn normalise(model: &str) -> String {
    let mut out = strip_decoration(model);
    if let Some(pos) = out.find("anthropic.")
        && (pos == 0 || out.as_bytes().get(pos - 1) == Some(&b'.'))
    {
        out.drain(..pos + "anthropic.".len());
    }
    if let Some(at) = out.find('@') {
        let suffix = out[at + 1..].to_owned();
        out.truncate(at);
        if is_digits(&suffix, 8) {
            out.push('-');
            out.push_str(&suffix);
        }
    }
    let kept = strip_version(&out).len();
    out.truncate(kept);
    out
}

/// Removes a Bedrock version suffix: `-v1:0`, `-v1`, `-v1:0:200k`; not from `claude-v2:1` or
/// `claude-instant-v1`, where the version is the model's name (a real base names a number).
fn strip_version(s: &str) -> &str {
    let Some(pos) = s.rfind("-v") else {
        return s;
    };
    let rest = &s[pos + 2..];
    let mut parts = rest.split(':');
    let version_ok = parts
        .next()
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    let tail_ok = parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    let base = &s[..pos];
    if version_ok && tail_ok && base.bytes().any(|b| b.is_ascii_digit()) {
        base
    } else {
        s
    }
}

/// The name without its date or `-latest` suffix (`-20250929`, `-2024-08-06`), if it has one.
fn strip_date(s: &str) -> Option<&str> {
    if let Some(base) = s.strip_suffix("-latest") {
        return Some(base);
    }
    let (base, tail) = s.rsplit_once('-')?;
    if is_digits(tail, 8) {
        return Some(base);
    }
    // ISO form: <base>-YYYY-MM-DD.
    let b = s.as_bytes();
    let n = b.len();
    let iso = n > 11
        && b[n - 11] == b'-'
        && b[n - 6] == b'-'
        && b[n - 3] == b'-'
        && [n - 10..n - 6, n - 5..n - 3, n - 2..n]
            .into_iter()
            .all(|r| b[r].iter().all(u8::is_ascii_digit));
    if iso { s.get(..n - 11) } else { None }
}

fn is_digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> PricingTable {
        PricingTable::builtin().unwrap()
    }

    fn usage(input: u64, output: u64, read: u64, w5m: u64, w1h: u64) -> TokenUsage {
        TokenUsage {
            input,
            output,
            cache_read: read,
            cache_write_5m: w5m,
            cache_write_1h: w1h,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        }
    }

    #[test]
    fn builtin_table_loads() {
        let t = builtin();
        assert!(t.len() > 500, "{} models", t.len());
        assert!(t.source().unwrap().contains("LiteLLM"));
    }

    #[test]
    fn sonnet_4_5_prices_match_the_source_table() {
        let t = builtin();
        let p = t.lookup("claude-sonnet-4-5").unwrap();
        assert_eq!(p.input, 3e-6);
        assert_eq!(p.output, 1.5e-5);
        assert_eq!(p.cache_read, Some(3e-7));
        assert_eq!(p.cache_write_5m, Some(3.75e-6));
        assert_eq!(p.cache_write_1h, Some(6e-6));
        let lc = p.long_context.as_ref().unwrap();
        assert_eq!(lc.above_tokens, 200_000);
        assert_eq!(lc.input, Some(6e-6));
        assert_eq!(lc.output, Some(2.25e-5));
        assert_eq!(lc.cache_read, Some(6e-7));
        assert_eq!(lc.cache_write_5m, Some(7.5e-6));
        assert_eq!(lc.cache_write_1h, Some(1.2e-5));
    }

    #[test]
    fn cost_of_every_token_kind() {
        // 1000×3000 + 500×15000 + 2000×300 + 400×3750 + 100×6000 nano-USD.
        let cost = builtin().cost_nanos("claude-sonnet-4-5", &usage(1000, 500, 2000, 400, 100));
        assert_eq!(cost, Some(13_200_000));
    }

    #[test]
    fn long_context_tier_applies_above_200k_prompt_tokens() {
        let t = builtin();
        // Exactly 200k prompt tokens: base prices. 150000×3000 + 1000×15000 + 50000×300.
        let at = usage(150_000, 1000, 50_000, 0, 0);
        assert_eq!(at.total_input(), 200_000);
        assert_eq!(t.cost_nanos("claude-sonnet-4-5", &at), Some(480_000_000));
        // One more: every kind at the tier. 150000×6000 + 1000×22500 + 50001×600.
        let above = usage(150_000, 1000, 50_001, 0, 0);
        assert_eq!(t.cost_nanos("claude-sonnet-4-5", &above), Some(952_500_600));
        // Cache writes count towards the threshold and take their tier prices.
        let writes = usage(1, 0, 0, 150_000, 50_000);
        // 1×6000 + 150000×7500 + 50000×12000.
        assert_eq!(t.cost_nanos("claude-sonnet-4-5", &writes), Some(1_725_006_000));
    }

    #[test]
    fn models_without_a_tier_keep_base_prices_on_long_prompts() {
        // claude-opus-4-5: 5e-6 in, 2.5e-5 out, no long-context tier.
        let cost = builtin().cost_nanos("claude-opus-4-5", &usage(300_000, 10, 0, 0, 0));
        assert_eq!(cost, Some(300_000 * 5000 + 10 * 25_000));
    }

    #[test]
    fn other_thresholds_than_200k() {
        let t = PricingTable::from_json(
            br#"{"models":{"m":{"input":1e-6,"output":2e-6,"input_above_272k":2e-6,"output_above_272k":3e-6}}}"#,
        )
        .unwrap();
        assert_eq!(
            t.lookup("m").unwrap().long_context.as_ref().unwrap().above_tokens,
            272_000
        );
        assert_eq!(
            t.cost_nanos("m", &usage(272_000, 1, 0, 0, 0)),
            Some(272_000 * 1000 + 2000)
        );
        // Above: input and output at the tier, cache read falls back to 0.1× the tier input.
        assert_eq!(
            t.cost_nanos("m", &usage(272_000, 1, 1, 0, 0)),
            Some(272_000 * 2000 + 3000 + 200)
        );
    }

    #[test]
    fn missing_cache_prices_fall_back_to_ratios_of_input() {
        let t = PricingTable::from_json(br#"{"models":{"m":{"input":1e-6,"output":2e-6}}}"#).unwrap();
        // 1×1000 + 1×2000 + 10×100 + 10×1250 + 10×2000.
        assert_eq!(t.cost_nanos("m", &usage(1, 1, 10, 10, 10)), Some(36_500));
        // claude-opus-4-1 (Bedrock entry) has no 1h write price: 2× 1.5e-5 input.
        let opus = builtin().cost_nanos("claude-opus-4-1", &usage(0, 0, 0, 0, 1000));
        assert_eq!(opus, Some(1000 * 30_000));
    }

    #[test]
    fn cost_rounds_to_the_nearest_nano() {
        let t = PricingTable::from_json(br#"{"models":{"m":{"input":2.5e-10,"output":0}}}"#).unwrap();
        assert_eq!(t.cost_nanos("m", &usage(1, 0, 0, 0, 0)), Some(0));
        assert_eq!(t.cost_nanos("m", &usage(2, 0, 0, 0, 0)), Some(1));
        assert_eq!(t.cost_nanos("m", &usage(3, 0, 0, 0, 0)), Some(1));
        assert_eq!(t.cost_nanos("m", &usage(6, 0, 0, 0, 0)), Some(2));
        assert_eq!(t.cost_nanos("m", &TokenUsage::default()), Some(0));
    }

    #[test]
    fn absurd_token_counts_do_not_overflow() {
        let huge = usage(u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(builtin().cost_nanos("claude-sonnet-4-5", &huge), Some(u64::MAX));
    }

    fn billed(u: TokenUsage, billing: crate::usage::Billing) -> TokenUsage {
        TokenUsage { billing, ..u }
    }

    fn with(f: impl FnOnce(&mut crate::usage::Billing)) -> crate::usage::Billing {
        let mut b = crate::usage::Billing::NONE;
        f(&mut b);
        b
    }

    #[test]
    fn fast_mode_doubles_every_token_price_on_the_models_that_have_it() {
        let t = builtin();
        for model in ["claude-opus-4-8", "claude-opus-5", "claude-opus-4-8-20990101"] {
            let p = t.lookup(model).unwrap();
            assert_eq!(p.fast_multiplier, Some(2.0), "{model}");
        }
        // Opus 4.8: 5e-6 in, 2.5e-5 out, 5e-7 read, 6.25e-6 5m write, 1e-5 1h write.
        let u = usage(1000, 500, 2000, 400, 100);
        let standard = 1000 * 5000 + 500 * 25_000 + 2000 * 500 + 400 * 6250 + 100 * 10_000;
        assert_eq!(t.cost_nanos("claude-opus-4-8", &u), Some(standard));
        let fast = t
            .cost("claude-opus-4-8", &billed(u, with(|b| b.speed = Speed::Fast)))
            .unwrap();
        // $10 / $50 per MTok, and the cache multipliers stack on the fast price.
        assert_eq!(fast.nanos, 2 * standard);
        assert!(fast.unpriced.is_empty());
        assert_eq!(
            t.cost_nanos(
                "claude-opus-4-8",
                &billed(usage(1_000_000, 1_000_000, 0, 0, 0), with(|b| b.speed = Speed::Fast))
            ),
            Some(10_000_000_000 + 50_000_000_000)
        );
        // Reported standard: the standard price.
        let std = t
            .cost("claude-opus-4-8", &billed(u, with(|b| b.speed = Speed::Standard)))
            .unwrap();
        assert_eq!((std.nanos, std.unpriced), (standard, Unpriced::default()));
    }

    #[test]
    fn fast_mode_without_a_fast_price_is_flagged_not_priced_as_standard_silently() {
        let t = builtin();
        // claude-opus-4-6 has no fast price in the table.
        let u = billed(usage(1000, 100, 0, 0, 0), with(|b| b.speed = Speed::Fast));
        let c = t.cost("claude-opus-4-6", &u).unwrap();
        assert_eq!(c.nanos, 1000 * 5000 + 100 * 25_000, "the known part still counts");
        assert_eq!(c.unpriced, Unpriced::SPEED);
        // An unknown speed too.
        let u = billed(usage(1, 0, 0, 0, 0), with(|b| b.speed = Speed::Unknown));
        assert_eq!(t.cost("claude-opus-4-8", &u).unwrap().unpriced, Unpriced::SPEED);
    }

    #[test]
    fn us_inference_multiplies_every_token_kind_and_stacks_with_fast_mode() {
        let t = builtin();
        let u = usage(1000, 500, 2000, 400, 100);
        let standard = 1000 * 5000 + 500 * 25_000 + 2000 * 500 + 400 * 6250 + 100 * 10_000;
        let us = t
            .cost("claude-opus-4-8", &billed(u, with(|b| b.geo = Geo::Us)))
            .unwrap();
        assert_eq!((us.nanos, us.unpriced), (standard * 11 / 10, Unpriced::default()));
        let both = with(|b| {
            b.geo = Geo::Us;
            b.speed = Speed::Fast;
        });
        assert_eq!(
            t.cost_nanos("claude-opus-4-8", &billed(u, both)),
            Some(standard * 22 / 10)
        );
        // `global` is the standard price.
        assert_eq!(
            t.cost_nanos("claude-opus-4-8", &billed(u, with(|b| b.geo = Geo::Global))),
            Some(standard)
        );
        // A model without the multiplier (older than 4.6), or an unknown geography: flagged.
        let c = t
            .cost(
                "claude-sonnet-4-5",
                &billed(usage(10, 0, 0, 0, 0), with(|b| b.geo = Geo::Us)),
            )
            .unwrap();
        assert_eq!((c.nanos, c.unpriced), (30_000, Unpriced::GEO));
        let c = t
            .cost(
                "claude-opus-4-8",
                &billed(usage(10, 0, 0, 0, 0), with(|b| b.geo = Geo::Unknown)),
            )
            .unwrap();
        assert_eq!((c.nanos, c.unpriced), (50_000, Unpriced::GEO));
    }

    #[test]
    fn web_searches_are_priced_per_search_and_web_fetches_are_free() {
        let t = builtin();
        let u = billed(
            usage(1000, 100, 0, 0, 0),
            with(|b| {
                b.web_searches = 3;
                b.web_fetches = 5;
            }),
        );
        // $10 per 1,000 searches = 10,000,000 nano-USD each; not multiplied by fast or geo.
        let tokens = 1000 * 3000 + 100 * 15_000;
        let c = t.cost("claude-sonnet-4-5", &u).unwrap();
        assert_eq!((c.nanos, c.unpriced), (tokens + 30_000_000, Unpriced::default()));
        let fast_us = TokenUsage {
            billing: crate::usage::Billing {
                speed: Speed::Fast,
                geo: Geo::Us,
                ..u.billing
            },
            ..usage(1000, 0, 0, 0, 0)
        };
        assert_eq!(
            t.cost_nanos("claude-opus-4-8", &fast_us),
            Some(1000 * 5000 * 22 / 10 + 30_000_000)
        );
        // Haiku 4.5 takes Anthropic's flat search price (filled in by the generator).
        assert_eq!(t.lookup("claude-haiku-4-5").unwrap().web_search, Some(0.01));
        // A model without a search price: the searches are flagged.
        let t = PricingTable::from_json(br#"{"models":{"m":{"input":1e-6,"output":2e-6}}}"#).unwrap();
        let c = t.cost("m", &u).unwrap();
        assert_eq!((c.nanos, c.unpriced), (1000 * 1000 + 100 * 2000, Unpriced::WEB_SEARCH));
    }

    #[test]
    fn unknown_server_tools_and_service_tiers_are_flagged() {
        let t = builtin();
        let u = billed(usage(10, 0, 0, 0, 0), with(|b| b.other_server_tools = 2));
        let c = t.cost("claude-sonnet-4-5", &u).unwrap();
        assert_eq!((c.nanos, c.unpriced), (30_000, Unpriced::SERVER_TOOL));
        let u = billed(
            usage(10, 0, 0, 0, 0),
            with(|b| b.tier = crate::usage::ServiceTier::Other),
        );
        let c = t.cost("claude-sonnet-4-5", &u).unwrap();
        assert_eq!((c.nanos, c.unpriced), (30_000, Unpriced::SERVICE_TIER));
        // Several at once, named for logs and metrics.
        let mut all = Unpriced::default();
        for flag in [Unpriced::SPEED, Unpriced::SERVER_TOOL, Unpriced::SERVICE_TIER] {
            all.insert(flag);
        }
        assert_eq!(all.to_string(), "speed,service_tier,server_tool_use");
        assert_eq!(Unpriced::default().to_string(), "");
        // An unknown model stays unknown whatever its usage says.
        assert!(t.cost("no-such-model", &u).is_none());
    }

    #[test]
    fn fast_mode_stacks_on_the_long_context_tier() {
        // A made-up model with both, to pin the order: tier first, then the multiplier.
        let t = PricingTable::from_json(
            br#"{"models":{"m":{"input":1e-6,"output":2e-6,"input_above_200k":2e-6,"output_above_200k":4e-6,"fast_multiplier":2,"geo_us_multiplier":1.5,"web_search":0.02}}}"#,
        )
        .unwrap();
        let p = t.lookup("m").unwrap();
        assert_eq!(
            (p.fast_multiplier, p.geo_us_multiplier, p.web_search),
            (Some(2.0), Some(1.5), Some(0.02))
        );
        let u = billed(usage(200_001, 10, 0, 0, 0), with(|b| b.speed = Speed::Fast));
        assert_eq!(t.cost_nanos("m", &u), Some((200_001 * 2000 + 10 * 4000) * 2));
    }

    #[test]
    fn the_new_fields_are_checked_like_prices() {
        for bad in [
            &br#"{"models":{"m":{"input":1e-6,"output":1e-6,"fast_multiplier":-2}}}"#[..],
            br#"{"models":{"m":{"input":1e-6,"output":1e-6,"fast_multiplier_above_200k":2}}}"#,
            br#"{"models":{"m":{"input":1e-6,"output":1e-6,"web_search":"0.01"}}}"#,
        ] {
            assert!(
                PricingTable::from_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unknown_model_has_no_price() {
        let t = builtin();
        assert!(t.lookup("no-such-model").is_none());
        assert_eq!(t.cost_nanos("no-such-model", &usage(1, 1, 0, 0, 0)), None);
        assert_eq!(t.cost_nanos("", &usage(1, 1, 0, 0, 0)), None);
    }

    #[track_caller]
    fn resolves(t: &PricingTable, model: &str, expected: &str) {
        assert_eq!(t.resolved_name(model), Some(expected), "{model}");
    }

    #[test]
    fn name_normalisation() {
        let t = builtin();
        resolves(&t, "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929");
        resolves(&t, "anthropic/claude-sonnet-4-5", "claude-sonnet-4-5");
        resolves(&t, "CLAUDE-SONNET-4-5", "claude-sonnet-4-5");
        resolves(&t, "claude-sonnet-4-5[1m]", "claude-sonnet-4-5");
        resolves(&t, "claude-sonnet-4-5@20250929", "claude-sonnet-4-5-20250929");
        // A Bedrock id the table lists is priced as listed (regional endpoints cost 10% more).
        resolves(
            &t,
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        );
        let us = t.lookup("us.anthropic.claude-sonnet-4-5-20250929-v1:0").unwrap();
        assert_eq!(us.input, 3.3e-6);
        // One it does not list falls back to the first-party model.
        resolves(
            &t,
            "ca.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5-20250929",
        );
        resolves(
            &t,
            "bedrock/anthropic.claude-sonnet-4-5-20250929-v1:0",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
        );
        resolves(
            &t,
            "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        );
        // A model listed only on Bedrock: its normalised names prefer the entry without region.
        let opus = "anthropic.claude-opus-4-1-20250805-v1:0";
        resolves(&t, "claude-opus-4-1-20250805", opus);
        resolves(&t, "claude-opus-4-1", opus);
        resolves(&t, "claude-opus-4-1[1m]", opus);
        resolves(&t, "claude-opus-4-1@20250805", opus);
        resolves(&t, "vertex_ai/claude-opus-4-1@20250805", opus);
        // A newer snapshot of a model with an undated entry takes that entry...
        resolves(&t, "claude-sonnet-4-5-20991231", "claude-sonnet-4-5");
        resolves(&t, "gpt-4o-2099-01-01", "gpt-4o");
        // ...but is not priced as another snapshot.
        assert!(t.lookup("claude-opus-4-1-20990101").is_none());
        resolves(&t, "gemini-2.5-pro", "gemini/gemini-2.5-pro");
        resolves(&t, "vertex_ai/claude-sonnet-4-5@default", "claude-sonnet-4-5");
    }

    #[test]
    fn undated_name_needs_exactly_one_dated_entry() {
        let t = PricingTable::from_json(
            br#"{"models":{
                "claude-x-20240101":{"input":1e-6,"output":1e-6},
                "claude-x-20240601":{"input":2e-6,"output":2e-6},
                "us.anthropic.claude-y-20240101-v1:0":{"input":3e-6,"output":3e-6},
                "eu.anthropic.claude-y-20240101-v1:0":{"input":4e-6,"output":4e-6}}}"#,
        )
        .unwrap();
        assert!(t.lookup("claude-x").is_none());
        resolves(&t, "claude-x-20240601", "claude-x-20240601");
        // Two entries with one dated name: still one candidate; the tie goes to the shorter,
        // then alphabetically first name.
        resolves(&t, "claude-y", "eu.anthropic.claude-y-20240101-v1:0");
        resolves(&t, "claude-y-20240101", "eu.anthropic.claude-y-20240101-v1:0");
    }

    #[test]
    fn normalise_cases() {
        assert_eq!(
            normalise("us.anthropic.claude-3-haiku-20240307-v1:0"),
            "claude-3-haiku-20240307"
        );
        assert_eq!(normalise("anthropic.claude-v2:1"), "claude-v2:1");
        assert_eq!(normalise("anthropic.claude-instant-v1"), "claude-instant-v1");
        assert_eq!(normalise("global.anthropic.claude-opus-4-6-v1"), "claude-opus-4-6");
        assert_eq!(
            normalise("anthropic.claude-3-sonnet-20240229-v1:0:200k"),
            "claude-3-sonnet-20240229"
        );
        assert_eq!(normalise("claude-opus-4-1[1m]"), "claude-opus-4-1");
        assert_eq!(
            normalise("vertex_ai/claude-sonnet-4-5@20250929"),
            "claude-sonnet-4-5-20250929"
        );
        assert_eq!(normalise("claude-sonnet-4-6@default"), "claude-sonnet-4-6");
        assert_eq!(normalise("gpt-4o"), "gpt-4o");
        assert_eq!(normalise("gpt-5-v2"), "gpt-5");
        assert_eq!(normalise("my-anthropic.model"), "my-anthropic.model");
        assert_eq!(normalise("é/ü[x]"), "ü");
        assert_eq!(strip_date("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(strip_date("claude-3-5-haiku-latest"), Some("claude-3-5-haiku"));
        assert_eq!(strip_date("claude-sonnet-4-5-20250929"), Some("claude-sonnet-4-5"));
        assert_eq!(strip_date("claude-sonnet-4-5"), None);
        assert_eq!(strip_date("x-2024-08-0a"), None);
        assert_eq!(strip_date("ü2024-08-06"), None);
    }

    #[test]
    fn malformed_tables_are_rejected() {
        let bad: &[&[u8]] = &[
            b"not json",
            br#"{"models":{"m":{"input":1e-6}}}"#,
            br#"{"models":{"m":{"output":1e-6}}}"#,
            br#"{"models":{"m":{"input":-1e-6,"output":1e-6}}}"#,
            br#"{"models":{"m":{"input":1e-6,"output":1e-6,"price":1}}}"#,
            br#"{"models":{"m":{"input":1e-6,"output":1e-6,"input_above_xk":1}}}"#,
            br#"{"models":{"m":{"input":1e-6,"output":1e-6,"bogus_above_200k":1}}}"#,
            br#"{"models":{"m":{"input":1e-6,"output":1e-6,"input_above_200k":1,"output_above_100k":1}}}"#,
            br#"{"models":{"m":{"input":"1e-6","output":1e-6}}}"#,
            br#"{"models":{},"extra":1}"#,
            br#"{"_source":"x"}"#,
        ];
        for b in bad {
            assert!(PricingTable::from_json(b).is_err(), "{}", String::from_utf8_lossy(b));
        }
        let err = PricingTable::from_json(br#"{"models":{"m":{"input":1e-6}}}"#).unwrap_err();
        assert!(err.to_string().contains("\"m\""), "{err}");
        assert!(PricingTable::from_json(br#"{"models":{}}"#).unwrap().is_empty());
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pricing.json");
        std::fs::write(&path, br#"{"models":{"m":{"input":1e-6,"output":2e-6}}}"#).unwrap();
        assert_eq!(PricingTable::load(&path).unwrap().len(), 1);
        let missing = dir.path().join("missing.json");
        let err = PricingTable::load(&missing).unwrap_err();
        assert!(matches!(err, PricingError::Io { .. }));
        assert!(err.to_string().contains("missing.json"));
    }
}
