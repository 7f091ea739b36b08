//! The client-facing relay: a Pingora HTTP application ([`RelayApp`]) that answers every request
//! itself.
//!
//! Header-only endpoints (probe, health, models) answer locally. Body-carrying endpoints run the
//! filter chain, read and parse the body once, then hand over to [`dispatch`], which owns the
//! upstream attempts and streams the answer back.

mod body;
mod conn;
mod connector;
mod dispatch;
pub mod error;
mod headers;
mod peer;
pub mod probe;
mod self_service;
mod settle;
mod stats_page;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use filters::{Chain, ClientKey, CompletionContext, FilterContext, RequestFacts};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::server::ShutdownWatch;

use crate::config::Config;
use crate::ingress::{Endpoint, Ingress, Route, Scope};
use crate::metrics::Metrics;
use crate::providers;
use crate::scheduler::Scheduler;
use crate::secrets::Secrets;
use crate::state::Snapshot;
use crate::store::Store;
use crate::usage::pricing::PricingTable;
use crate::usage::stats::UsageSink;
pub use conn::{ConnLimits, GuardedApp};
pub use connector::Connector;
use error::{ErrorSource, RelayError, error_body, error_head};
pub use peer::Peers;

/// Everything the relay path needs, shared by all requests.
pub struct Relay {
    pub config: Arc<Config>,
    pub secrets: Arc<Secrets>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub scheduler: Arc<Scheduler>,
    pub store: Arc<dyn Store>,
    pub pricing: Arc<PricingTable>,
    pub usage: UsageSink,
    pub metrics: Arc<Metrics>,
    pub chain: Chain,
    pub connector: Connector,
    pub peers: Peers,
    /// Sticky sessions, leases and account health shared by instances.
    pub coord: Arc<dyn crate::store::coord::Coordination>,
    pub leases: Arc<crate::leases::Leases>,
    /// Global cooldowns by error class (`scheduler.cooldowns`).
    pub cooldowns: std::collections::HashMap<crate::types::CooldownClass, Duration>,
    /// Live tokens of OAuth accounts (`claude-oauth`, `openai-oauth`).
    pub oauth: crate::state::TokenEngines,
    /// This process's mark in the `x-relay-hops` header of the requests it sends upstream.
    pub hop_id: String,
    /// What the providers read to prepare requests (OAuth beta flag, Bedrock model ids).
    pub providers: crate::providers::ProviderEnv,
    /// The scheduler's side of the attempt loop: it yields attempts and takes their outcomes.
    pub outcomes: crate::scheduler::attempts::Outcomes,
    /// The owner of background work (the shared write of an account's health).
    pub tasks: crate::lifecycle::Tasks,
    /// Requests in flight and the last ones finished, for the admin's live view.
    pub live: Arc<crate::usage::live::Live>,
    /// Where each relayed request's metadata record goes (`request_log`).
    pub request_log: crate::usage::request_log::RequestLogSink,
    /// The per-key budget of the self-service usage endpoint.
    pub self_service: self_service::Budget,
    /// The key limit counters (also behind the filter chain), read by the self-service endpoint.
    pub limits: Arc<dyn filters::LimitBackend>,
    /// How a key's limits and counters are shown (`limits::view::limits`, handed in from above so
    /// that the key's own answer and the admin API's agree).
    pub limits_view: fn(&filters::policy::KeyPolicy, &filters::LimitPeek, i64) -> serde_json::Value,
    /// Keys refused by a filter lately (see `dispatch::Begun::ask_early`).
    pub refusals: dispatch::RecentRefusals,
}

/// One request of a client, as Pingora's server reads it (HTTP/1 or an HTTP/2 stream).
pub(crate) type Session = pingora::protocols::http::ServerSession;

/// The relay's request handling (wrapped by [`RelayApp`] for Pingora's server).
pub struct RelayProxy(pub Arc<Relay>);

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    route: Option<Route>,
    key: Option<Arc<ClientKey>>,
    /// Time spent waiting on upstreams (for the overhead histogram).
    upstream_time: Duration,
    status: u16,
    client_disconnected: bool,
    settle: Option<settle::Settle>,
    holds: Vec<Box<dyn Any + Send + Sync>>,
    /// The account's concurrency lease of the committed attempt, held until the answer is over.
    account_lease: Option<crate::leases::LeaseGuard>,
    in_flight: Option<InFlight>,
    /// The request in the live view's in-flight counts.
    live: Option<crate::usage::live::LiveGuard>,
    /// The body's facts, once parsed.
    facts: Option<RequestFacts>,
    /// The relay key came in `x-relay-key`: the request goes to `claude-passthrough` accounts
    /// only, with the client's own credentials.
    passthrough: bool,
    /// The client's address, once read.
    client_ip: Option<std::net::IpAddr>,
    /// The reason and source of the relay's own error answer, if it gave one.
    error: Option<(&'static str, ErrorSource)>,
    /// When the response head went to the client (time to first byte).
    first_byte: Option<Duration>,
    /// Upstream attempts sent (each account tried).
    attempts: u16,
    /// The account of the last attempt: id and name.
    account: Option<(Arc<str>, Arc<str>)>,
    /// The model and stream flag the body asked for (kept for the request log only).
    requested: Option<(Option<Arc<str>>, bool)>,
}

struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RequestCtx {
    fn new() -> Self {
        RequestCtx {
            start: Instant::now(),
            route: None,
            key: None,
            upstream_time: Duration::ZERO,
            status: 0,
            client_disconnected: false,
            settle: None,
            holds: Vec::new(),
            account_lease: None,
            in_flight: None,
            live: None,
            facts: None,
            passthrough: false,
            client_ip: None,
            error: None,
            first_byte: None,
            attempts: 0,
            account: None,
            requested: None,
        }
    }

    /// Notes the time of the response head (the first write to the client wins).
    fn mark_first_byte(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.start.elapsed());
        }
    }
}

/// Writes a complete JSON response.
async fn respond_json(session: &mut Session, status: u16, body: Bytes) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(status, Some(2))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(h)).await?;
    if !head_only {
        session.write_response_body(body, true).await?;
    }
    Ok(())
}

/// Answers with an error in the route's dialect.
async fn respond_error(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &RelayError,
    source: ErrorSource,
) -> pingora::Result<()> {
    let dialect = ctx.route.map_or(crate::ingress::Dialect::Anthropic, |r| r.dialect);
    let body = error_body(dialect, err);
    let head = error_head(err, body.len(), source)?;
    relay.metrics.rejections.with_label_values(&[err.reason()]).inc();
    if let Some(s) = ctx.settle.as_mut() {
        s.is_error = true;
    }
    ctx.status = err.status();
    ctx.error = Some((err.reason(), source));
    ctx.mark_first_byte();
    session.write_response_header(Box::new(head)).await?;
    session.write_response_body(body, true).await?;
    Ok(())
}

impl RelayProxy {
    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<()> {
        let relay = &*self.0;
        if relay.config.stats_page {
            let req = session.req_header();
            if matches!(req.method, http::Method::GET | http::Method::HEAD)
                && let Some(rel) = stats_page::page_path(req.uri.path())
            {
                let rel = rel.to_string();
                ctx.status = stats_page::respond(session, &rel).await?;
                return Ok(());
            }
        }
        let route = {
            let req = session.req_header();
            crate::ingress::classify(&req.method, req.uri.path())
        };
        ctx.route = Some(route);
        ctx.passthrough = filters::is_passthrough(&session.req_header().headers);
        match route.endpoint {
            Endpoint::Probe => {
                let mut h = ResponseHeader::build(200, Some(1))?;
                h.insert_header("content-length", "0")?;
                ctx.status = 200;
                return session.write_response_header(Box::new(h)).await;
            }
            Endpoint::Health => {
                ctx.status = 200;
                return respond_json(session, 200, Bytes::from_static(br#"{"status":"ok"}"#)).await;
            }
            Endpoint::NotFound => {
                let path = session.req_header().uri.path().to_string();
                let e = RelayError::NotFound(format!("No such endpoint: {path}"));
                return respond_error(relay, session, ctx, &e, ErrorSource::Relay).await;
            }
            Endpoint::MethodNotAllowed(allowed) => {
                return respond_error(
                    relay,
                    session,
                    ctx,
                    &RelayError::MethodNotAllowed(allowed),
                    ErrorSource::Relay,
                )
                .await;
            }
            Endpoint::Upgrade => {
                return respond_error(relay, session, ctx, &RelayError::UpgradeRequired, ErrorSource::Relay).await;
            }
            Endpoint::KeyUsage
            | Endpoint::Messages
            | Endpoint::CountTokens
            | Endpoint::Models(_)
            | Endpoint::ModelInfo(_)
            | Endpoint::ChatCompletions(_)
            | Endpoint::Responses
            | Endpoint::ResponsesCompact
            | Endpoint::GeminiGenerate { .. }
            | Endpoint::GeminiCountTokens
            | Endpoint::CodeAssistGenerate { .. }
            | Endpoint::CodeAssistCountTokens
            | Endpoint::CodeAssistSetup(_) => {}
        }

        if headers::loop_detected(&session.req_header().headers, &relay.hop_id) {
            session.set_keepalive(None);
            return respond_error(relay, session, ctx, &RelayError::LoopDetected, ErrorSource::Relay).await;
        }

        relay.metrics.in_flight.inc();
        ctx.in_flight = Some(InFlight(relay.metrics.in_flight.clone()));
        // Read once: both filter phases see the same address.
        let ip = client_ip(session, &relay.config.trusted_proxies);
        ctx.client_ip = ip;

        // Phase 1: filters that need only the head (key auth first).
        let rejection = {
            let req = session.req_header();
            let mut cx = FilterContext {
                route: route.info(),
                headers: &req.headers,
                query: req.uri.query(),
                client_ip: ip,
                key: None,
                facts: None,
                holds: &mut ctx.holds,
            };
            let r = relay.chain.run_headers(&mut cx).await;
            ctx.key = cx.key.take();
            r.err()
        };
        if let Some(rej) = rejection {
            return respond_error(relay, session, ctx, &RelayError::Rejected(rej), ErrorSource::Relay).await;
        }

        if route.endpoint == Endpoint::KeyUsage {
            let query = session.req_header().uri.query().map(str::to_string);
            let key = ctx.key.clone();
            return match self_service::answer(relay, key.as_deref(), query.as_deref()).await {
                Ok(body) => {
                    ctx.status = 200;
                    respond_json(session, 200, body).await
                }
                Err(e) => respond_error(relay, session, ctx, &e, ErrorSource::Relay).await,
            };
        }
        if let Some(k) = &ctx.key {
            ctx.live = Some(relay.live.start(k.id.clone()));
        }

        match route.endpoint {
            Endpoint::Models(scope) => {
                ctx.status = 200;
                // `/v1/models` is the same path for both SDKs: an Anthropic client (which sends
                // `anthropic-version`) gets the models of Messages requests, any other the models
                // of Chat Completions, which reach every kind.
                let anthropic = route.dialect == crate::ingress::Dialect::Anthropic
                    && session.req_header().headers.contains_key("anthropic-version");
                let op = if anthropic {
                    providers::Operation::Messages
                } else {
                    listing_operation(route.dialect)
                };
                let body = models_body(relay, ctx.key.as_deref(), route, op, scope, ctx.passthrough);
                return respond_json(session, 200, body).await;
            }
            Endpoint::ModelInfo(scope) => {
                let path = session.req_header().uri.path().to_string();
                let id = path.rsplit_once("/models/").map_or("", |(_, id)| id);
                let id = crate::ingress::percent_decode(id);
                return match model_info(relay, ctx.key.as_deref(), route, scope, ctx.passthrough, &id) {
                    Some(body) => {
                        ctx.status = 200;
                        respond_json(session, 200, body).await
                    }
                    None => {
                        let e = RelayError::UnknownModel(id);
                        respond_error(relay, session, ctx, &e, ErrorSource::Relay).await
                    }
                };
            }
            Endpoint::CodeAssistSetup(setup) => {
                // The body only says which project the client chose, if it did.
                let body = if session.req_header().method == http::Method::POST {
                    match read_body(relay, session).await {
                        Ok(b) => b,
                        Err(e) => {
                            session.set_keepalive(None);
                            return respond_error(relay, session, ctx, &e, ErrorSource::Relay).await;
                        }
                    }
                } else {
                    Bytes::new()
                };
                let project = client_project(&body);
                ctx.status = 200;
                let answer = crate::ingress::gemini::setup_answer(setup, project.as_deref());
                return respond_json(session, 200, answer).await;
            }
            _ => {}
        }

        // Phase 2: the body, bounded.
        let body = match read_body(relay, session).await {
            Ok(b) => b,
            Err(e) => {
                // The rest of the body is not read: the connection cannot carry another request.
                session.set_keepalive(None);
                return respond_error(relay, session, ctx, &e, ErrorSource::Relay).await;
            }
        };
        let body = match body::decode_content(&session.req_header().headers, body, relay.config.max_body_bytes) {
            Ok(b) => b,
            Err(e) => return respond_error(relay, session, ctx, &e, ErrorSource::Relay).await,
        };
        let mut parsed = match parse_request(session.req_header(), route.endpoint, &body) {
            Ok(p) => p,
            Err(e) => return respond_error(relay, session, ctx, &e, ErrorSource::Relay).await,
        };
        if relay.request_log.is_on() {
            // What the request log shows of a request the filters below may still refuse.
            ctx.requested = Some((parsed.facts.model.as_deref().map(Arc::from), parsed.facts.stream));
        }
        if let Some(key) = &ctx.key {
            estimate_request(relay, &key.policy, route.endpoint, &body, &mut parsed);
        }
        let mut begun = dispatch::Begun::plan(relay, route, ctx.key.as_deref(), ctx.passthrough, &parsed);
        let rejection = {
            let req = session.req_header();
            let mut cx = FilterContext {
                route: route.info(),
                headers: &req.headers,
                query: req.uri.query(),
                client_ip: ip,
                key: ctx.key.clone(),
                facts: Some(&parsed.facts),
                holds: &mut ctx.holds,
            };
            if dispatch::Begun::ask_early(relay, ctx.key.as_deref()) {
                // The admission and the first account's binding and lease: two store calls in
                // flight together, one round trip.
                let (admitted, ()) = tokio::join!(relay.chain.run_request(&mut cx), begun.ask_first(relay));
                admitted.err()
            } else {
                relay.chain.run_request(&mut cx).await.err()
            }
        };
        if let Some(rej) = rejection {
            // An account slot taken early is freed as `begun` drops.
            drop(begun);
            if let Some(key) = &ctx.key {
                relay.refusals.note(&key.id);
            }
            return respond_error(relay, session, ctx, &RelayError::Rejected(rej), ErrorSource::Relay).await;
        }

        // count_tokens is free upstream and is not billed or counted as usage.
        if route.endpoint.is_billed()
            && let Some(key) = &ctx.key
        {
            let mut settle = settle::Settle::new(
                relay.usage.clone(),
                relay.pricing.clone(),
                relay.metrics.clone(),
                key.id.clone(),
                parsed.facts.model.clone().unwrap_or_default(),
            );
            settle.session = crate::usage::sessions::SessionTag::from_request(
                &session.req_header().headers,
                parsed.facts.session.as_deref(),
            );
            // Only the Messages body reaches the upstream with its `speed`.
            settle.asked_fast = parsed.facts.fast && route.endpoint == Endpoint::Messages;
            ctx.settle = Some(settle);
        }
        ctx.facts = Some(parsed.facts.clone());
        dispatch::run(relay, session, ctx, body, &parsed, begun).await
    }
}

/// What the limit filters need to know of the request's size and cost beforehand, for the keys
/// that need it (see `usage::estimate`): the priced reservation of a key with spend caps or a cost
/// window, the prompt's estimated tokens for a key with `max_input_tokens`. Free requests
/// (`count_tokens`) reserve nothing.
fn estimate_request(
    relay: &Relay,
    policy: &filters::policy::KeyPolicy,
    endpoint: Endpoint,
    body: &Bytes,
    parsed: &mut body::ParsedBody,
) {
    use crate::usage::estimate;
    if policy.reserves_cost() && endpoint.is_billed() {
        let model = parsed.facts.model.as_deref().unwrap_or_default();
        let fast = parsed.facts.fast && endpoint == Endpoint::Messages;
        parsed.facts.reserve_nanos =
            estimate::reserve_nanos(&relay.pricing, model, body.len(), parsed.max_output, fast);
    }
    if let Some(limit) = policy.max_input_tokens
        && endpoint.is_billed()
    {
        parsed.facts.input_tokens = Some(estimate::prompt_tokens(body, limit));
    }
}

/// Parses a relayed request's body into its facts. The Gemini API names the model in the path and
/// Code Assist's `countTokens` in `request.model`; Gemini asks for a stream in the method name.
fn parse_request(
    req: &pingora::http::RequestHeader,
    endpoint: Endpoint,
    body: &Bytes,
) -> Result<body::ParsedBody, RelayError> {
    let elsewhere = matches!(
        endpoint,
        Endpoint::GeminiGenerate { .. } | Endpoint::GeminiCountTokens | Endpoint::CodeAssistCountTokens
    );
    let mut parsed = body::parse_with_headers(body, !elsewhere, Some(&req.headers))?;
    match endpoint {
        Endpoint::GeminiGenerate { .. } | Endpoint::GeminiCountTokens => {
            let model = crate::ingress::gemini::path_model(req.uri.path()).unwrap_or_default();
            parsed.set_model(model)?;
        }
        Endpoint::CodeAssistCountTokens => {
            let model = crate::convert::code_assist::count_tokens_model(body)
                .ok_or_else(|| RelayError::BadRequest("`request.model` is required".into()))?;
            parsed.set_model(model)?;
        }
        _ => {}
    }
    if let Some(stream) = endpoint.streams_by_path() {
        parsed.facts.stream = stream;
    }
    Ok(parsed)
}

/// The project a Code Assist setup call names (`cloudaicompanionProject` or `project`).
fn client_project(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Named {
        #[serde(default)]
        cloudaicompanion_project: Option<String>,
        #[serde(default)]
        project: Option<String>,
    }
    let n: Named = serde_json::from_slice(body).ok()?;
    n.cloudaicompanion_project
        .or(n.project)
        .filter(|p| !p.is_empty() && p.len() <= 128)
}

/// The operation whose models a dialect's model list shows.
fn listing_operation(dialect: crate::ingress::Dialect) -> providers::Operation {
    match dialect {
        crate::ingress::Dialect::Gemini => providers::Operation::GeminiGenerate,
        _ => providers::Operation::Chat,
    }
}

/// Reads the whole request body, answering `Expect: 100-continue` and refusing bodies over the
/// limit (early, from `content-length`, when the client announces it) and bodies that stall
/// (`timeouts.request_body_idle` without progress, or longer than `timeouts.request_body`).
async fn read_body(relay: &Relay, session: &mut Session) -> Result<Bytes, RelayError> {
    let limit = relay.config.max_body_bytes;
    let req = session.req_header();
    let announced = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(RelayError::PayloadTooLarge(limit));
    }
    let expects_continue = req
        .headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue && !session.is_http2() {
        session
            .write_continue_response()
            .await
            .map_err(|e| RelayError::BadRequest(format!("cannot answer Expect: {e}")))?;
    }
    let mut buf = BytesMut::with_capacity(announced.unwrap_or(8 * 1024).min(limit));
    let idle = relay.config.timeouts.request_body_idle.0;
    let deadline = Instant::now() + relay.config.timeouts.request_body.0;
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        let Ok(read) = tokio::time::timeout(wait, session.read_request_body()).await else {
            relay
                .metrics
                .connections_closed
                .with_label_values(&["request_body"])
                .inc();
            return Err(RelayError::RequestTimeout(if Instant::now() >= deadline {
                format!(
                    "The request body did not arrive within {}s",
                    relay.config.timeouts.request_body.0.as_secs()
                )
            } else {
                format!("The request body stalled for {}s", idle.as_secs())
            }));
        };
        match read {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(RelayError::PayloadTooLarge(limit));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(RelayError::BadRequest(format!("cannot read the request body: {e}"))),
        }
    }
    Ok(buf.freeze())
}

/// The models a key may use at an endpoint: those its accounts are configured for, or, for
/// accounts that serve a whole family, that family's first-party names from the price table;
/// with mapped aliases; less what the key's policy refuses. In the endpoint's dialect.
fn models_body(
    relay: &Relay,
    key: Option<&ClientKey>,
    route: Route,
    op: providers::Operation,
    scope: Scope,
    passthrough: bool,
) -> Bytes {
    let ids = model_ids(relay, key, op, scope, passthrough);
    match crate::ingress::for_dialect(route.dialect) {
        Some(ingress) => ingress.models_list(&ids),
        None => crate::ingress::anthropic::AnthropicMessages.models_list(&ids),
    }
}

/// One model in the dialect's shape, if the key may use it here.
fn model_info(
    relay: &Relay,
    key: Option<&ClientKey>,
    route: Route,
    scope: Scope,
    passthrough: bool,
    id: &str,
) -> Option<Bytes> {
    let id = id.strip_prefix("models/").unwrap_or(id);
    let ids = model_ids(relay, key, listing_operation(route.dialect), scope, passthrough);
    let ingress = crate::ingress::for_dialect(route.dialect).unwrap_or(&crate::ingress::openai::OpenAi);
    ids.iter().any(|m| m == id).then(|| ingress.model_info(id))
}

/// The models of the accounts a request of `op` can reach.
fn model_ids(
    relay: &Relay,
    key: Option<&ClientKey>,
    op: providers::Operation,
    scope: Scope,
    passthrough: bool,
) -> Vec<String> {
    let snap = relay.snapshot.load();
    let kinds = dispatch::kinds_for(op, scope, passthrough);
    let binding = key.and_then(|k| k.bind.as_deref());
    let mut set = std::collections::BTreeSet::new();
    for a in snap.pool.all() {
        if !a.open_to(binding, kinds) {
            continue;
        }
        set.extend(a.model_map.keys().cloned());
        match &a.models {
            Some(m) => set.extend(m.iter().cloned()),
            None => set.extend(
                // First-party names only: no provider paths, regions, or Bedrock/Vertex ids.
                relay
                    .pricing
                    .model_names()
                    // The table lists Gemini models under Google's provider path.
                    .map(|n| n.strip_prefix("gemini/").unwrap_or(n))
                    .filter(|n| !n.contains(['/', '@', ':']) && !n.starts_with("ft:"))
                    .filter(|n| providers::Family::of(n).is_some_and(|f| providers::default_family(a.kind, Some(f))))
                    .filter(|n| providers::Family::of(n) != Some(providers::Family::Claude) || !n.contains('.'))
                    .map(String::from),
            ),
        }
    }
    set.retain(|m| key.is_none_or(|k| k.policy.allows_model(m)));
    set.into_iter().collect()
}

/// The relay's HTTP application: Pingora's server hands it every request (each request of an
/// HTTP/1 connection in turn, each stream of an HTTP/2 one), and it answers each itself. Pingora's
/// proxy pipeline (`ProxyHttp`) is not used: the relay never lets it choose or reach an upstream
/// (see [`dispatch`]), and its per-request state, sized for doing so, took about 15 KB per request
/// in flight and a copy of that per request.
pub struct RelayApp {
    proxy: RelayProxy,
    options: HttpServerOptions,
    /// Set when the listeners stop: a connection waiting for its next request closes.
    closing: AtomicBool,
    closed: tokio::sync::Notify,
}

impl RelayApp {
    pub fn new(proxy: RelayProxy, options: HttpServerOptions) -> Self {
        RelayApp {
            proxy,
            options,
            closing: AtomicBool::new(false),
            closed: tokio::sync::Notify::new(),
        }
    }

    /// Resolves once the listeners have stopped.
    async fn closing(&self) {
        // Made before the flag is read, so a notice between the two is not missed.
        let closed = self.closed.notified();
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        closed.await
    }
}

#[async_trait]
impl HttpServerApp for RelayApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: Session,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let read = tokio::select! {
            // A request already buffered is served even when the listeners stop.
            biased;
            read = session.read_request() => read,
            _ = self.closing() => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if e.etype == pingora::ErrorType::InvalidHTTPHeader {
                    // The connection's guard gives this refusal a body in the caller's shape.
                    let _ = session.respond_error(400).await;
                } else {
                    tracing::debug!(error = %e, "reading a request head failed");
                }
                session.shutdown().await;
                return None;
            }
        }
        if session.req_header().method == http::Method::CONNECT {
            let _ = session.respond_error(405).await;
            session.shutdown().await;
            return None;
        }
        if *shutdown.borrow() {
            // The server is stopping: this connection takes no further request.
            session.set_keepalive(None);
        }
        if !self.proxy.serve(&mut session).await {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    async fn http_cleanup(&self) {
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
    }
}

impl RelayProxy {
    /// Answers one request. True when the connection may carry the next one. (The session is
    /// borrowed: a future keeps a by-value argument twice, and this one lives as long as the
    /// request.)
    async fn serve(&self, session: &mut Session) -> bool {
        let mut ctx = RequestCtx::new();
        conn::request_started();
        // Requests a client sends before reading the previous answer are answered in order.
        session.set_pipelining_enabled(true);
        // While handing the listeners to a new process, answer with `Connection: close` so
        // clients move their keep-alive connections over before this process stops.
        if crate::lifecycle::draining() {
            session.set_keepalive(None);
        }
        match self.handle(session, &mut ctx).await {
            Ok(()) => {
                self.logging(session, &mut ctx).await;
                true
            }
            Err(e) => {
                let status = self.fail(session, &e, &mut ctx).await;
                if !ctx.client_disconnected {
                    // Method and path only: the query may carry a client key (`?key=`).
                    let req = session.req_header();
                    tracing::error!(error = %e, status, "request failed: {} {}", req.method, req.uri.path());
                }
                self.logging(session, &mut ctx).await;
                session.on_proxy_failure(e);
                false
            }
        }
    }

    /// After an error of the handler: a 500 in the caller's shape when no answer has started, else
    /// nothing (closing the connection is the only honest signal left). Either way the
    /// connection is not reused. Returns the status answered (0: none).
    async fn fail(&self, session: &mut Session, e: &pingora::Error, ctx: &mut RequestCtx) -> u16 {
        if session.response_written().is_some() || ctx.client_disconnected {
            return 0;
        }
        let err = RelayError::Internal(format!("relay error: {:?}", e.etype()));
        let _ = respond_error(&self.0, session, ctx, &err, ErrorSource::Relay).await;
        500
    }

    /// After the answer (or the failure): metrics, the key's settlement, the live view, the access
    /// line and the request log.
    async fn logging(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let endpoint = ctx.route.map_or("unknown", |r| r.endpoint.name());
        let status = session.response_written().map_or(ctx.status, |h| h.status.as_u16());
        let m = &self.0.metrics;
        m.requests.with_label_values(&[endpoint, status_label(status)]).inc();
        let total = ctx.start.elapsed();
        m.overhead
            .with_label_values(&[endpoint])
            .observe(total.saturating_sub(ctx.upstream_time).as_secs_f64());
        // The account's slot is freed while the key's limits settle: both store calls in flight
        // together.
        drop(ctx.account_lease.take());
        // Completion filters (charging limits) see the usage and cost, then the request settles.
        let mut cost_nanos = None;
        if let Some(route) = ctx.route
            && ctx.key.is_some()
        {
            let (tokens, cost) = match ctx.settle.as_mut() {
                Some(s) => {
                    cost_nanos = s.final_cost_nanos();
                    (
                        s.usage.total_input().saturating_add(s.usage.output),
                        cost_nanos.unwrap_or(0),
                    )
                }
                None => (0, 0),
            };
            let cx = CompletionContext {
                route: route.info(),
                key: ctx.key.as_ref(),
                facts: ctx.facts.as_ref(),
                status,
                tokens,
                cost_nanos: cost,
                holds: &ctx.holds,
            };
            self.0.chain.run_complete(&cx).await;
        }
        // Every relayed request (refused ones too) and every other request of a known key.
        let live = ctx.live.take();
        if live.is_some() || ctx.route.is_some_and(|r| r.endpoint.is_relayed()) {
            let model = ctx
                .settle
                .as_ref()
                .and_then(|s| s.upstream_model.as_deref().map(Arc::<str>::from))
                .or_else(|| {
                    ctx.facts
                        .as_ref()
                        .and_then(|f| f.model.as_deref())
                        .map(Arc::<str>::from)
                });
            let tokens = ctx
                .settle
                .as_ref()
                .map_or(0, |s| s.usage.total_input().saturating_add(s.usage.output));
            self.0.live.finish(crate::usage::live::Recent {
                at_ms: chrono::Utc::now().timestamp_millis(),
                key: live.as_ref().and_then(|l| l.key().cloned()),
                account: live.as_ref().and_then(|l| l.account().cloned()),
                model,
                status,
                duration_ms: total.as_millis() as u64,
                tokens,
            });
        }
        // The access line (`log.access`, switched by the log's filter) and the request log share
        // one entry.
        let access = crate::logging::access_log();
        if (access.is_some() || self.0.request_log.is_on())
            && let Some(route) = ctx.route.filter(|r| r.endpoint.is_relayed())
        {
            let mut entry = request_log_entry(session, ctx, route, status, total, cost_nanos);
            if let Some(log) = access {
                entry.ensure_request_id();
                entry.log_access(log);
            }
            self.0.request_log.push(entry);
        }
        ctx.settle.take();
        ctx.holds.clear();
        ctx.in_flight.take();
        conn::request_finished();
    }
}

/// The request log's record of a finished relayed request: what the context gathered on the way.
fn request_log_entry(
    session: &Session,
    ctx: &RequestCtx,
    route: Route,
    status: u16,
    total: Duration,
    cost_nanos: Option<u64>,
) -> crate::usage::request_log::RequestEntry {
    use crate::usage::request_log::{MAX_REQUEST_ID_CHARS, MAX_USER_AGENT_CHARS, RequestEntry, client_text};
    const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    const ERROR_SOURCE: http::HeaderName = http::HeaderName::from_static("x-relay-error-source");
    let headers = &session.req_header().headers;
    let header = |name: http::HeaderName, max: usize| headers.get(name).and_then(|v| client_text(v.as_bytes(), max));
    let written_source = session
        .response_written()
        .and_then(|h| h.headers.get(ERROR_SOURCE))
        .map(|v| {
            if v.as_bytes() == b"upstream" {
                ErrorSource::Upstream
            } else {
                ErrorSource::Relay
            }
        });
    let settle = ctx.settle.as_ref();
    let failed = settle.is_some_and(|s| s.is_error);
    let (error, error_source) = match (ctx.error, written_source) {
        (Some((reason, source)), _) => (Some(reason), Some(source.as_str())),
        (None, Some(ErrorSource::Upstream)) => (Some("upstream_error"), Some("upstream")),
        (None, Some(ErrorSource::Relay)) => (Some("relay_error"), Some("relay")),
        (None, None) if failed && !ctx.client_disconnected => (Some("stream_error"), Some("upstream")),
        (None, None) => (None, None),
    };
    let elapsed_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    RequestEntry {
        started_ms: chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(i64::try_from(total.as_millis()).unwrap_or(0)),
        request_id: header(REQUEST_ID, MAX_REQUEST_ID_CHARS),
        key_id: ctx.key.as_ref().map(|k| k.id.clone()),
        key_name: ctx.key.as_ref().map(|k| k.name.clone()),
        account_id: ctx.account.as_ref().map(|a| a.0.clone()),
        account_name: ctx.account.as_ref().map(|a| a.1.clone()),
        dialect: dialect_name(route.dialect),
        endpoint: route.endpoint.name(),
        model: ctx.requested.as_ref().and_then(|r| r.0.clone()),
        upstream_model: settle.and_then(|s| s.upstream_model.as_deref()).map(Arc::from),
        stream: ctx.requested.as_ref().is_some_and(|r| r.1),
        status,
        client_disconnected: ctx.client_disconnected,
        failed,
        error,
        error_source,
        usage: settle.map(|s| s.usage).unwrap_or_default(),
        cost_nanos,
        ttfb_ms: ctx.first_byte.map(elapsed_ms),
        duration_ms: elapsed_ms(total),
        failover_hops: ctx.attempts.saturating_sub(1),
        user_agent: header(http::header::USER_AGENT, MAX_USER_AGENT_CHARS),
        client_ip: ctx.client_ip,
    }
}

fn dialect_name(d: crate::ingress::Dialect) -> &'static str {
    match d {
        crate::ingress::Dialect::Anthropic => "anthropic",
        crate::ingress::Dialect::OpenAI => "openai",
        crate::ingress::Dialect::Gemini => "gemini",
    }
}

/// The client's address (see [`crate::net::client_ip`]).
fn client_ip(session: &Session, trusted: &[ipnet::IpNet]) -> Option<std::net::IpAddr> {
    let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())?;
    Some(crate::net::client_ip(peer, &session.req_header().headers, trusted))
}

pub(crate) fn status_label(s: u16) -> &'static str {
    const EXACT: [(u16, &str); 14] = [
        (0, "0"),
        (200, "200"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (413, "413"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
        (529, "529"),
    ];
    if let Some((_, label)) = EXACT.iter().find(|(code, _)| *code == s) {
        return label;
    }
    match s / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}
