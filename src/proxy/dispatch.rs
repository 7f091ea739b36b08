//! The dispatch: the attempt loop of a relayed request.
//!
//! Pingora's proxy pipeline chooses the upstream (`upstream_peer`) before the body is read and can
//! replay at most 64 KiB, so the relay does not use it: the body-carrying endpoints run here,
//! after the body is read (see `RelayApp`): pick an account (scheduler),
//! build its peer, rewrite the request for it, send it through Pingora's pooled `Connector`, read
//! the response head, then either try the next account (nothing has reached the client yet) or
//! commit: stream the body to the client unchanged while the usage reader watches it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use filters::ClientKey;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;

use super::body::ParsedBody;
use super::error::{ErrorSource, RelayError};
use super::{Relay, RequestCtx, Session, headers};
use crate::convert::answer::{self, Answer, StreamAdapter};
use crate::convert::{self, Conversion, chat_anthropic, chat_gemini, chat_responses, openai_chat};
use crate::credentials::TokenError;
use crate::ingress::{Dialect, Endpoint, ErrorKind, Route, Scope};
use crate::providers::{self, Call, Operation, PrepareError, Prepared, Provider, ResponseKind, Target};
use crate::scheduler::Account;
use crate::scheduler::attempts::{Attempt, AttemptPlan, AttemptRequest, Failure, Next};
use crate::scheduler::health::{self, Verdict};
use crate::store::coord::{AccountHealth, HealthState};
use crate::store::{AccountKind, KindSet};
use crate::types::CooldownClass;

/// The log target of the upstream requests the relay sends: `RELAY_LOG=relay::upstream=debug`
/// shows each one's URI and headers (credentials redacted), never its body.
const UPSTREAM_LOG: &str = "relay::upstream";

/// Largest non-streamed upstream answer the relay holds to read its usage.
const MAX_BUFFERED_ANSWER: usize = 64 * 1024 * 1024;
/// Largest error body read from an upstream that is failed over (kept for a faithful replay).
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// An upstream refusal held back while other accounts are tried; replayed if all fail.
pub(super) struct HeldAnswer {
    head: pingora::http::ResponseHeader,
    body: Bytes,
}

/// How an attempt ended without a committed answer.
pub(super) enum AttemptError {
    /// Nothing reached the client; the account failed (mark it when given) and another may be
    /// tried.
    Retryable(RelayError, Option<AccountHealth>, &'static str),
    /// The upstream refused with a failover status; the account is marked and another tried.
    Refused(HeldAnswer, Option<AccountHealth>),
    /// The upstream refused an OAuth token (401) the relay believed valid: refresh it and send
    /// the request again on the same account. The mark applies if that fails.
    TokenRejected(HeldAnswer, Option<AccountHealth>),
    /// Nothing reached the client, but trying again elsewhere would be wrong (e.g. a timeout on
    /// a request the upstream may still be running).
    Final(RelayError),
    /// The answer was committed and then broke; the client connection must be closed.
    Broken(Box<pingora::Error>),
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The attempts of a request, planned before its filters run, and its first account when it was
/// asked for while they ran.
pub(super) struct Begun {
    plan: AttemptPlan,
    /// `Some` once the first account was asked for (`Some(None)`: there was none).
    first: Option<Option<Attempt>>,
}

impl Begun {
    /// Plans the attempts of a request to `route` (no store access: the session's binding is asked
    /// with the first attempt).
    pub(super) fn plan(
        relay: &Relay,
        route: Route,
        key: Option<&ClientKey>,
        passthrough: bool,
        parsed: &ParsedBody,
    ) -> Begun {
        let plan = relay.outcomes.plan(AttemptRequest {
            model: parsed.facts.model.as_deref().unwrap_or_default(),
            kinds: kinds_for(operation(route.endpoint), route.endpoint.scope(), passthrough),
            key_id: key.map(|k| k.id.clone()),
            binding: key.and_then(|k| k.bind.clone()),
            session: parsed.facts.session.as_deref(),
        });
        Begun { plan, first: None }
    }

    /// Asks for the first account (its session's binding and its lease: one store call). Run
    /// while the filters admit the request, so that the two store calls share one round trip.
    pub(super) async fn ask_first(&mut self, relay: &Relay) {
        let pool = relay.snapshot.load_full();
        let first = relay
            .outcomes
            .next(&mut self.plan, &pool.pool, |_| account_busy(relay))
            .await;
        self.first = Some(first);
    }

    /// Whether the first account is asked for while the filters run: only when the key's limits
    /// go to the store (else there is no round trip to share), the key has no queue (a queued
    /// request would hold the account's slot while it waits) and was not refused here lately (a
    /// client that keeps sending refused requests must not keep taking account slots).
    pub(super) fn ask_early(relay: &Relay, key: Option<&ClientKey>) -> bool {
        let Some(key) = key else { return false };
        let p = &key.policy;
        (p.rate_limit.is_some() || p.cost_limits.is_some() || p.concurrency.is_some())
            && p.concurrency.as_ref().is_none_or(|c| c.queue == 0)
            && relay.config.store.backend == crate::config::StoreBackend::Redis
            && !relay.refusals.lately(&key.id)
    }
}

fn account_busy(relay: &Relay) {
    relay.metrics.failovers.with_label_values(&["account_busy"]).inc();
}

/// Keys refused by a filter on this instance in the last [`RecentRefusals::FOR`]: their requests
/// do not take an account slot before they are admitted.
#[derive(Default)]
pub struct RecentRefusals(std::sync::Mutex<std::collections::HashMap<Arc<str>, Instant>>);

impl RecentRefusals {
    const FOR: Duration = Duration::from_secs(2);
    /// Past this many keys the record starts over.
    const MAX: usize = 10_000;

    pub(super) fn note(&self, key_id: &Arc<str>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= Self::MAX {
            m.retain(|_, at| at.elapsed() < Self::FOR);
        }
        m.insert(key_id.clone(), Instant::now());
    }

    fn lately(&self, key_id: &str) -> bool {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key_id).is_some_and(|at| at.elapsed() < Self::FOR)
    }
}

/// Relays a parsed request. Returns `Err` only when the client connection must not be reused.
///
/// The scheduler yields the attempts (see `scheduler::attempts`) and takes each outcome back;
/// this loop only runs them: it asks the account's provider to prepare the upstream request,
/// sends it, and commits the answer or reports the failure.
pub(super) async fn run(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: Bytes,
    parsed: &ParsedBody,
    begun: Begun,
) -> pingora::Result<()> {
    let Some(route) = ctx.route else { return Ok(()) };
    let model = parsed.facts.model.clone().unwrap_or_default();
    let Begun { mut plan, first } = begun;
    let result = attempts(
        relay,
        session,
        ctx,
        route.endpoint,
        body,
        parsed,
        &model,
        &mut plan,
        first,
    )
    .await;
    relay.outcomes.settle(&mut plan);
    result
}

/// The operation a relayed endpoint asks for.
fn operation(endpoint: Endpoint) -> Operation {
    match endpoint {
        Endpoint::CountTokens => Operation::CountTokens,
        Endpoint::ChatCompletions(_) => Operation::Chat,
        Endpoint::Responses => Operation::Responses,
        Endpoint::ResponsesCompact => Operation::ResponsesCompact,
        Endpoint::GeminiGenerate { .. } => Operation::GeminiGenerate,
        Endpoint::GeminiCountTokens => Operation::GeminiCountTokens,
        Endpoint::CodeAssistGenerate { .. } => Operation::CodeAssistGenerate,
        Endpoint::CodeAssistCountTokens => Operation::CodeAssistCountTokens,
        _ => Operation::Messages,
    }
}

/// The account kinds a request can be sent to: those whose wire its dialect converts to, and
/// on a Claude-only (Gemini-only) mount point the Claude (Gemini) kinds. A pass-through request
/// (its relay key in `x-relay-key`) goes to `claude-passthrough` accounts only, and no other
/// request does: only it brings credentials to forward.
pub(super) fn kinds_for(op: Operation, scope: Scope, passthrough: bool) -> KindSet {
    let mut set = KindSet::NONE;
    for kind in AccountKind::ALL {
        if (kind == AccountKind::ClaudePassthrough) != passthrough {
            continue;
        }
        let in_scope = match scope {
            Scope::Any => true,
            Scope::Claude => providers::default_family(kind, Some(providers::Family::Claude)),
            Scope::Gemini => providers::default_family(kind, Some(providers::Family::Gemini)),
        };
        if convert::conversion(op, providers::provider(kind).wire()).is_some() && in_scope {
            set = set.with(kind);
        }
    }
    set
}

/// The request body for one account: converted to its wire, with its model.
pub(super) struct Outgoing {
    pub(super) body: Bytes,
    /// The upstream is asked to stream.
    pub(super) stream: bool,
    /// The relay asked for usage the client did not.
    pub(super) strip_usage: bool,
    pub(super) include_usage: bool,
    /// The upstream query instead of the client's (a converted request's client query means
    /// nothing to the upstream).
    pub(super) query: Option<Option<&'static str>>,
}

impl AttemptError {
    /// What went wrong, in words fit for an administrator (no secrets, no addresses).
    pub(super) fn message(&self) -> String {
        match self {
            AttemptError::Retryable(e, _, _) | AttemptError::Final(e) => e.message(),
            AttemptError::Refused(..) | AttemptError::TokenRejected(..) => "the upstream refused the request".into(),
            AttemptError::Broken(e) => format!("the upstream connection broke: {e}"),
        }
    }
}

impl Outgoing {
    fn new(body: Bytes, stream: bool) -> Outgoing {
        Outgoing {
            body,
            stream,
            strip_usage: false,
            include_usage: false,
            query: None,
        }
    }
}

pub(super) fn outgoing(
    conversion: Conversion,
    upstream_op: Operation,
    body: &Bytes,
    parsed: &ParsedBody,
    upstream_model: &str,
) -> Result<Outgoing, convert::ConvertError> {
    let stream = parsed.facts.stream;
    Ok(match conversion {
        Conversion::PassThrough if upstream_op == Operation::CodeAssistCountTokens => Outgoing::new(
            convert::code_assist::with_count_tokens_model(body, upstream_model),
            stream,
        ),
        Conversion::PassThrough => Outgoing::new(parsed.with_model(body, upstream_model), stream),
        Conversion::WrapCodeAssist if upstream_op == Operation::CodeAssistCountTokens => {
            Outgoing::new(convert::code_assist::wrap_count_tokens(body, upstream_model)?, stream)
        }
        Conversion::WrapCodeAssist => Outgoing::new(
            convert::code_assist::wrap_generate(body, upstream_model, &prompt_id(parsed))?,
            stream,
        ),
        Conversion::ChatToGemini => {
            let (b, facts) = chat_gemini::request_to_gemini(body)?;
            let b = if upstream_op == Operation::CodeAssistGenerate {
                convert::code_assist::wrap_generate(&b, upstream_model, &prompt_id(parsed))?
            } else {
                b
            };
            Outgoing {
                include_usage: facts.include_usage,
                // Gemini streams SSE only when asked with `alt=sse`.
                query: Some(facts.stream.then_some("alt=sse")),
                ..Outgoing::new(b, facts.stream)
            }
        }
        Conversion::UnwrapCodeAssist => Outgoing::new(convert::code_assist::unwrap_request(body)?, stream),
        Conversion::ChatToMessages => {
            let (b, facts) = chat_anthropic::request_to_messages(body, upstream_model)?;
            Outgoing {
                include_usage: facts.include_usage,
                ..Outgoing::new(b, facts.stream)
            }
        }
        Conversion::ChatToChat => {
            let (b, injected) = openai_chat::passthrough_request(body, upstream_model)?;
            Outgoing {
                strip_usage: injected,
                include_usage: !injected,
                ..Outgoing::new(b, stream)
            }
        }
        Conversion::ChatToResponses => {
            let (b, facts) = chat_responses::request_to_responses(body, upstream_model)?;
            Outgoing {
                include_usage: facts.include_usage,
                // The Codex backend streams whatever the client asked.
                ..Outgoing::new(b, true)
            }
        }
    })
}

/// The `user_prompt_id` of a request sent to Code Assist by a client that names none: its
/// session, else its own.
fn prompt_id(parsed: &ParsedBody) -> String {
    parsed
        .facts
        .session
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

#[allow(clippy::too_many_arguments)]
async fn attempts(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    endpoint: Endpoint,
    body: Bytes,
    parsed: &ParsedBody,
    model: &str,
    plan: &mut AttemptPlan,
    mut first: Option<Option<Attempt>>,
) -> pingora::Result<()> {
    let op = operation(endpoint);
    let query = headers::strip_key_param(session.req_header().uri.query());
    let snapshot = relay.snapshot.load_full();
    let mut last_relay_err: Option<RelayError> = None;
    // Boxed: most requests never hold one, and in place it is part of every stream's state.
    let mut held: Option<Box<HeldAnswer>> = None;
    loop {
        let next = match first.take() {
            Some(f) => f,
            None => relay.outcomes.next(plan, &snapshot.pool, |_| account_busy(relay)).await,
        };
        let Some(mut chosen) = next else { break };
        let account = chosen.account.clone();
        let upstream_model = account.upstream_model(model).to_string();
        let provider = providers::provider(account.kind);
        let Some((conversion, upstream_op)) = convert::conversion(op, provider.wire()) else {
            // The scheduler only yields accounts of the kinds the request can go to.
            continue;
        };
        let out = match outgoing(conversion, upstream_op, &body, parsed, &upstream_model) {
            Ok(o) => o,
            Err(e) => {
                // The request cannot be said in this account's wire; another kind may take it
                // (a Chat `stop` refused for the Codex backend is fine for an OpenAI key). The
                // account is not to blame.
                relay.outcomes.failed(
                    plan,
                    &account,
                    Failure {
                        status: None,
                        mark: None,
                    },
                );
                last_relay_err = Some(RelayError::BadRequest(e.0));
                held = None;
                continue;
            }
        };
        let _in_flight = InFlightOn::new(&account);
        // An OAuth token refused before its time is refreshed once and the request sent again.
        let mut token_retry = account.oauth().is_some();
        let outcome = loop {
            let (live, issued_at) = match oauth_credential(relay, &account).await {
                Ok(c) => c,
                Err(e) => break Err(e),
            };
            let project = match code_assist_project(relay, &account, live.as_ref()).await {
                Ok(p) => p,
                Err(e) => break Err(e),
            };
            let call = Call {
                op: upstream_op,
                client: session.req_header(),
                query: out.query.unwrap_or(query.as_deref()),
                body: &out.body,
                upstream_model: &upstream_model,
                stream: out.stream,
            };
            let target = Target {
                base: &account.base,
                credential: &account.credential,
                live: live.as_ref(),
                project: project.as_deref().map(String::as_str),
            };
            // Signing, when the wire needs it, happens here: anew on every attempt. Boxed and built
            // in a block of its own, so the request (sent by then) is not part of a stream's state
            // for the stream's whole life.
            let (prepared, wire_model) = {
                let mut prepared = match provider.prepare(&relay.providers, &call, &target) {
                    Ok(p) => p,
                    Err(PrepareError::Account(e)) => {
                        tracing::warn!(account = %account.name, error = %e, "cannot prepare the upstream request; trying the next account");
                        break Err(AttemptError::Retryable(
                            RelayError::AccountCredential(e),
                            None,
                            "prepare",
                        ));
                    }
                    Err(PrepareError::Request(e)) => break Err(AttemptError::Final(RelayError::BadRequest(e))),
                };
                prepared.head.append_header(headers::HOPS, relay.hop_id.as_str())?;
                if tracing::enabled!(target: UPSTREAM_LOG, tracing::Level::DEBUG) {
                    tracing::debug!(
                        target: UPSTREAM_LOG,
                        account = %account.name,
                        uri = %prepared.head.uri,
                        headers = %headers::redacted(&prepared.head.headers),
                        body_bytes = prepared.body.len(),
                        "upstream request"
                    );
                }
                let wire_model = prepared.wire_model.take().unwrap_or_else(|| upstream_model.clone());
                (Box::new(prepared), wire_model)
            };
            if let Some(l) = ctx.live.as_mut() {
                l.set_account(account.id.clone());
            }
            ctx.attempts = ctx.attempts.saturating_add(1);
            ctx.account = Some((account.id.clone(), account.name.clone()));
            if let Some(s) = ctx.settle.as_mut() {
                s.account_id = Some(account.id.clone());
                s.account_rt = Some(account.rt.clone());
                s.model_known = account.names_model(model);
                s.upstream_model = Some(wire_model.clone());
            }
            // Responses pass byte for byte; other passed-through answers carry the client's model.
            let rename =
                (wire_model != model && upstream_op != Operation::Responses).then_some((wire_model.as_str(), model));
            let answer = Answer {
                kind: prepared.response,
                conversion,
                client_model: model,
                rename,
                include_usage: out.include_usage,
                strip_usage: out.strip_usage,
                collect: conversion == Conversion::ChatToResponses && !parsed.facts.stream,
            };
            let result = attempt(
                relay,
                session,
                ctx,
                plan,
                &account,
                provider,
                prepared,
                endpoint,
                answer,
                token_retry,
            )
            .await;
            match result {
                Err(AttemptError::TokenRejected(answer, mark)) => {
                    token_retry = false;
                    let Some(issued) = issued_at else { continue };
                    let Some(tokens) = relay.oauth.of(account.kind) else {
                        continue;
                    };
                    let mark = match tokens.refresh(&account, issued).await {
                        Ok(_) => continue,
                        // A refused refresh already took the account out of the pool.
                        Err(TokenError::Refresh(r)) if r.is_refusal() => None,
                        Err(_) => mark,
                    };
                    if !relay.config.scheduler.failover.statuses.contains(&401) {
                        // 401 is not failed over here: the client gets it as it was.
                        if let Some(h) = mark {
                            relay.outcomes.mark(&account, h);
                        }
                        return replay_refusal(relay, session, ctx, answer).await;
                    }
                    break Err(AttemptError::Refused(answer, mark));
                }
                other => break other,
            }
        };
        match outcome {
            Ok(()) => {
                ctx.account_lease = chosen.take_lease();
                return Ok(());
            }
            Err(AttemptError::Retryable(e, mark, reason)) => {
                tracing::warn!(account = %account.name, error = %e.message(), "upstream attempt failed; trying the next account");
                relay.metrics.failovers.with_label_values(&[reason]).inc();
                relay.outcomes.failed(plan, &account, Failure { status: None, mark });
                last_relay_err = Some(e);
                held = None;
            }
            Err(AttemptError::Refused(answer, mark) | AttemptError::TokenRejected(answer, mark)) => {
                let status = answer.head.status.as_u16();
                if relay.outcomes.failed(
                    plan,
                    &account,
                    Failure {
                        status: Some(status),
                        mark,
                    },
                ) == Next::AnswerClient
                {
                    relay.metrics.failovers.with_label_values(&["request_problem"]).inc();
                    tracing::info!(account = %account.name, status, "the next account refused the request the same way; answering the client, marking no account");
                    return replay_refusal(relay, session, ctx, answer).await;
                }
                tracing::warn!(account = %account.name, status, "upstream refused; trying the next account");
                relay
                    .metrics
                    .failovers
                    .with_label_values(&[super::status_label(status)])
                    .inc();
                held = Some(Box::new(answer));
                last_relay_err = None;
            }
            Err(AttemptError::Final(e)) => {
                last_relay_err = Some(e);
                held = None;
                break;
            }
            Err(AttemptError::Broken(e)) => {
                if let Some(s) = ctx.settle.as_mut() {
                    s.is_error = true;
                }
                return Err(e);
            }
        }
    }
    if let Some(answer) = held.map(|b| *b) {
        // Every attempt failed: the client gets the last upstream refusal as it was.
        return replay_refusal(relay, session, ctx, answer).await;
    }
    let err = last_relay_err.unwrap_or_else(|| {
        let binding = ctx.key.as_ref().and_then(|k| k.bind.as_deref());
        // OpenAI clients are told a model nobody serves is not found (what OpenAI answers); the
        // Anthropic surface keeps its 503.
        let openai = ctx.route.is_some_and(|r| r.dialect == Dialect::OpenAI);
        if !openai || snapshot.pool.serves_any(model, plan.kinds(), binding) {
            let back = snapshot.pool.soonest_back(model, plan.kinds(), binding, now_ms());
            RelayError::NoAccount(model.to_string(), back.map(|ms| (ms.max(0) as u64).div_ceil(1000)))
        } else {
            RelayError::UnknownModel(model.to_string())
        }
    });
    super::respond_error(relay, session, ctx, &err, ErrorSource::Relay).await
}

/// The bearer header of an OAuth account (refreshed first when expired, by its kind's token
/// machinery) and the `issued_at` of its token; `None` for accounts with a fixed credential.
pub(super) async fn oauth_credential(
    relay: &Relay,
    account: &Arc<Account>,
) -> Result<(Option<http::HeaderValue>, Option<i64>), AttemptError> {
    let (Some(_), Some(tokens)) = (account.oauth(), relay.oauth.of(account.kind)) else {
        return Ok((None, None));
    };
    match tokens.credential(account).await {
        Ok(live) => Ok((Some(live.header.clone()), Some(live.issued_at))),
        Err(e) => {
            tracing::warn!(account = %account.name, error = %e, "no usable OAuth token; trying the next account");
            let now = now_ms();
            let mark = match &e {
                // A refused refresh has marked the account already; the others are about this
                // process or another instance's refresh, not the account.
                TokenError::Refresh(r) if r.is_refusal() => None,
                TokenError::LockTimeout | TokenError::HandingOver => None,
                TokenError::NoRefreshToken => Some(AccountHealth::starting(
                    HealthState::Unauthorized,
                    "the OAuth token expired and there is no refresh token",
                    now,
                    None,
                )),
                _ => Some(AccountHealth::starting(
                    HealthState::CoolingDown,
                    "OAuth token refresh failed",
                    now,
                    Some(account.cooldown(CooldownClass::Connect, &relay.cooldowns)),
                )),
            };
            Err(AttemptError::Retryable(
                RelayError::AccountCredential(format!("its OAuth token could not be refreshed ({e})")),
                mark,
                "oauth_refresh",
            ))
        }
    }
}

/// The Code Assist project of a `gemini-oauth` account (found once when its settings name none);
/// `None` for other accounts.
pub(super) async fn code_assist_project(
    relay: &Relay,
    account: &Arc<Account>,
    live: Option<&http::HeaderValue>,
) -> Result<Option<Arc<String>>, AttemptError> {
    let providers::Credential::GoogleOAuth(_, project) = &account.credential else {
        return Ok(None);
    };
    if let Some(p) = project.get() {
        return Ok(Some(p));
    }
    let Some(bearer) = live else { return Ok(None) };
    match relay.oauth.google.project(account, bearer).await {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            tracing::warn!(account = %account.name, error = %e, "the account has no Code Assist project; trying the next account");
            Err(AttemptError::Retryable(
                RelayError::AccountCredential(format!("it has no Code Assist project ({e})")),
                None,
                "project",
            ))
        }
    }
}

/// Counts this instance's requests in flight on an account.
struct InFlightOn(Arc<crate::scheduler::AccountRuntime>);

impl InFlightOn {
    fn new(a: &Account) -> Self {
        a.rt.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlightOn(a.rt.clone())
    }
}

impl Drop for InFlightOn {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn replay_refusal(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    answer: HeldAnswer,
) -> pingora::Result<()> {
    if let Some(s) = ctx.settle.as_mut() {
        s.is_error = true;
    }
    let mut resp = headers::downstream_response(
        &answer.head,
        &relay.config.hide_headers,
        session.is_http2(),
        false,
        true,
    )?;
    resp.insert_header("x-relay-error-source", ErrorSource::Upstream.as_str())?;
    resp.remove_header("transfer-encoding");
    resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len().to_string())?;
    ctx.status = answer.head.status.as_u16();
    let empty = answer.body.is_empty();
    ctx.mark_first_byte();
    session.write_response_header(Box::new(resp)).await?;
    if !empty {
        session.write_response_body(answer.body, true).await?;
    }
    Ok(())
}

/// Sends the request and reads the response head, retrying on a fresh connection when a pooled
/// one turns out to be stale.
pub(super) async fn send(
    relay: &Relay,
    account: &Account,
    req: &RequestHeader,
    body: &Bytes,
) -> Result<(HttpSession, Arc<pingora::upstreams::peer::HttpPeer>), AttemptError> {
    let peer = relay
        .peers
        .get(&account.base, account.proxy.as_deref())
        .await
        .map_err(|e| AttemptError::Retryable(e, None, "dns"))?;
    let head_timeout = relay.config.timeouts.response_head.0;
    for _ in 0..3 {
        let (mut up, reused) = match relay.connector.session(&peer).await {
            Ok(s) => s,
            Err(e) => {
                relay.peers.forget(&account.base);
                relay.metrics.upstream_errors.with_label_values(&["connect"]).inc();
                // The detail (addresses, proxies) is for the log, not for clients.
                tracing::warn!(account = %account.name, error = %e, "cannot connect to the upstream");
                let cooldown = account.cooldown(CooldownClass::Connect, &relay.cooldowns);
                return Err(AttemptError::Retryable(
                    RelayError::UpstreamUnreachable("could not connect to the upstream".into()),
                    Some(health::connect_failure(cooldown, now_ms())),
                    "connect",
                ));
            }
        };
        let exchange = async {
            super::connector::send_request(&mut up, &peer, req, body).await?;
            up.read_response_header().await
        };
        match tokio::time::timeout(head_timeout, exchange).await {
            Ok(Ok(())) => return Ok((up, peer)),
            Ok(Err(e)) if reused => {
                tracing::debug!(error = %e, "pooled upstream connection was stale; reconnecting");
                continue;
            }
            Ok(Err(e)) => {
                relay.metrics.upstream_errors.with_label_values(&["io"]).inc();
                tracing::warn!(account = %account.name, error = %e, "upstream exchange failed before the response head");
                let cooldown = account.cooldown(CooldownClass::Connect, &relay.cooldowns);
                return Err(AttemptError::Retryable(
                    RelayError::UpstreamUnreachable("the upstream connection failed before answering".into()),
                    Some(health::connect_failure(cooldown, now_ms())),
                    "io",
                ));
            }
            Err(_) => {
                relay.metrics.upstream_errors.with_label_values(&["timeout"]).inc();
                return Err(AttemptError::Final(RelayError::UpstreamTimeout(format!(
                    "no response head within {}s",
                    head_timeout.as_secs()
                ))));
            }
        }
    }
    relay.metrics.upstream_errors.with_label_values(&["io"]).inc();
    Err(AttemptError::Retryable(
        RelayError::UpstreamUnreachable("connection failed repeatedly".into()),
        None,
        "io",
    ))
}

/// The verdict on an account, given who made the request: a call its client marks as background
/// never parks an account, and an account that forwards the client's own credentials is never
/// judged by what the upstream said to them (the client gets the answer as it came).
fn judged(session: &Session, provider: &dyn Provider, verdict: Verdict) -> Verdict {
    if provider.forwards_client_credentials() {
        return match verdict {
            Verdict::Mark(_) | Verdict::PassOn => Verdict::RequestProblem,
            v => v,
        };
    }
    if health::is_background(&session.req_header().headers) {
        return verdict.without_mark();
    }
    verdict
}

/// [`send`], watching the client meanwhile: if it goes away while the upstream thinks, the
/// upstream request is dropped (which aborts it) instead of waiting minutes for an answer nobody
/// will read. Its own function, so that its state ends with the response head.
async fn send_watching(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    account: &Account,
    prepared: Box<Prepared>,
) -> Result<(HttpSession, Arc<pingora::upstreams::peer::HttpPeer>), AttemptError> {
    let client_gone = async {
        loop {
            match session.read_body_or_idle(true).await {
                Err(e) => return e,
                Ok(_) => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        r = send(relay, account, &prepared.head, &prepared.body) => r,
        e = client_gone => {
            ctx.client_disconnected = true;
            relay.metrics.upstream_errors.with_label_values(&["client_gone"]).inc();
            Err(AttemptError::Broken(e))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    plan: &mut AttemptPlan,
    account: &Account,
    provider: &'static dyn Provider,
    prepared: Box<Prepared>,
    endpoint: Endpoint,
    answer: Answer<'_>,
    token_retry: bool,
) -> Result<(), AttemptError> {
    let kind = answer.kind;
    let sent_at = Instant::now();
    let (mut up, peer) = send_watching(relay, session, ctx, account, prepared).await?;
    let ttfb = sent_at.elapsed();
    relay
        .metrics
        .upstream_ttfb
        .with_label_values(&[endpoint.name()])
        .observe(ttfb.as_secs_f64());

    let Some(mut head) = up.response_header().cloned() else {
        return Err(AttemptError::Retryable(
            RelayError::UpstreamProtocol("no response head".into()),
            None,
            "io",
        ));
    };
    let now = now_ms();
    if let Some(u) = provider.observe(&head.headers, now / 1000) {
        account.rt.set_unified(u);
    }
    // Classified by what the answer means (an AWS error type may say more than its status); the
    // client sees that status too when the answer is converted.
    let status = provider.effective_status(head.status.as_u16(), &head.headers);
    if kind != ResponseKind::Anthropic && status != head.status.as_u16() {
        head.set_status(status).map_err(AttemptError::Broken)?;
    }
    // A 401 on an OAuth token the relay believed valid goes back to the dispatch for one refresh.
    let token_rejected = status == 401 && token_retry;
    if token_rejected || status >= 400 && relay.config.scheduler.failover.statuses.contains(&status) {
        // Not committed yet: read the refusal (bounded) to classify it and keep it for replay.
        let raw = read_error_body(relay, &mut up).await;
        let cooldown = |c: CooldownClass| account.cooldown(c, &relay.cooldowns);
        let verdict = judged(
            session,
            provider,
            health::classify(status, &head.headers, &raw, &cooldown, now),
        );
        up.shutdown().await;
        let held = client_error(&answer, head, raw);
        return match (verdict, token_rejected) {
            (Verdict::Mark(h), true) => Err(AttemptError::TokenRejected(held, Some(h))),
            (Verdict::RequestProblem | Verdict::PassOn, true) => Err(AttemptError::TokenRejected(held, None)),
            (Verdict::Mark(h), false) => Err(AttemptError::Refused(held, Some(h))),
            (Verdict::PassOn, false) => Err(AttemptError::Refused(held, None)),
            (Verdict::RequestProblem, false) => {
                ctx.status = status;
                replay_refusal(relay, session, ctx, held)
                    .await
                    .map_err(AttemptError::Broken)
            }
        };
    }
    let is_stream = answer::is_stream(kind, status, &head.headers);
    // Only successful answers carry a model to put back.
    let answer = Answer {
        rename: answer.rename.filter(|_| status < 300),
        ..answer
    };
    if status >= 400
        && let Some(s) = ctx.settle.as_mut()
    {
        s.is_error = true;
    }
    ctx.status = status;
    // Committed: the scheduler binds the session on success and settles earlier failures.
    relay.outcomes.committed(plan, account, status < 400);
    let result = if is_stream {
        let mut adapter = StreamAdapter::new(&answer);
        let r = stream(relay, session, ctx, &mut up, &head, &answer, &mut adapter).await;
        if let Ok(Some(failure)) = &r {
            // The wire failed inside the stream: the account is judged by what it said.
            if let Some(s) = provider.stream_failure(failure) {
                let cooldown = |c: CooldownClass| account.cooldown(c, &relay.cooldowns);
                let verdict = health::classify(s, &http::HeaderMap::new(), b"", &cooldown, now_ms());
                if let Verdict::Mark(h) = judged(session, provider, verdict) {
                    tracing::warn!(account = %account.name, failure = %failure, "the upstream failed inside the stream");
                    relay.outcomes.mark(account, h);
                }
            }
        }
        r.map(drop)
    } else {
        relay_complete(relay, session, ctx, &mut up, &head, &answer).await
    };
    let upstream_time = sent_at.elapsed();
    ctx.upstream_time += upstream_time;
    relay
        .metrics
        .upstream_latency
        .with_label_values(&[endpoint.name()])
        .observe(upstream_time.as_secs_f64());
    match result {
        Ok(()) => {
            if up.response_done() {
                relay.connector.release(up, &peer).await;
            }
            Ok(())
        }
        Err(e) => {
            up.shutdown().await;
            Err(e)
        }
    }
}

/// An upstream refusal in the client's dialect, held for replay.
fn client_error(a: &Answer<'_>, mut head: pingora::http::ResponseHeader, raw: Bytes) -> HeldAnswer {
    let status = head.status.as_u16();
    if !answer::rewrites_body(a, status) {
        return HeldAnswer { head, body: raw };
    }
    let body = answer::complete_body(a, status, &head.headers, raw).body;
    // The converted body is JSON; the replay sets its length.
    let _ = head.insert_header(http::header::CONTENT_TYPE, "application/json");
    HeldAnswer { head, body }
}

pub(super) async fn read_error_body(relay: &Relay, up: &mut HttpSession) -> Bytes {
    let mut buf = BytesMut::new();
    let idle = relay.config.timeouts.stream_idle.0.min(Duration::from_secs(30));
    while buf.len() < MAX_ERROR_BODY {
        match tokio::time::timeout(idle, up.read_response_body()).await {
            Ok(Ok(Some(c))) => buf.extend_from_slice(&c[..c.len().min(MAX_ERROR_BODY - buf.len())]),
            _ => break,
        }
    }
    buf.freeze()
}

fn mark_head(head: &pingora::http::ResponseHeader, resp: &mut pingora::http::ResponseHeader) -> pingora::Result<()> {
    if head.status.as_u16() >= 400 {
        resp.insert_header("x-relay-error-source", ErrorSource::Upstream.as_str())?;
    }
    Ok(())
}

/// Streams a committed answer to the client through its adapter. Returns the wire's own failure
/// met inside the stream (a Bedrock exception type), if any.
#[allow(clippy::too_many_arguments)]
async fn stream(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    up: &mut HttpSession,
    head: &pingora::http::ResponseHeader,
    answer: &Answer<'_>,
    adapter: &mut StreamAdapter,
) -> Result<Option<String>, AttemptError> {
    let idle = relay.config.timeouts.stream_idle.0;
    if adapter.collects() {
        // Boxed: a collected answer is rare, and in place its state (about 2.6 KB) would be part of
        // every stream's for the stream's whole life.
        return Box::pin(collect(relay, session, ctx, up, head, adapter))
            .await
            .map(|()| None);
    }
    let converted = answer::converts_stream(answer);
    let renamed = answer.rename.is_some() || answer.strip_usage;
    let mut resp = headers::downstream_response(
        head,
        &relay.config.hide_headers,
        session.is_http2(),
        false,
        renamed || converted,
    )
    .map_err(AttemptError::Broken)?;
    if converted {
        resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
            .map_err(AttemptError::Broken)?;
    }
    mark_head(head, &mut resp).map_err(AttemptError::Broken)?;
    ctx.mark_first_byte();
    session
        .write_response_header(Box::new(resp))
        .await
        .map_err(AttemptError::Broken)?;

    let keepalive = keepalive(relay, ctx, answer);
    // Keep-alives go only between events, never inside one the upstream left half sent.
    let mut at_boundary = true;
    let ceiling = ctx
        .holds
        .iter()
        .find_map(|h| (**h).downcast_ref::<filters::SpendCeiling>())
        .copied();
    let mut priced = crate::usage::TokenUsage::default();
    // With a ceiling, bytes go out whole events at a time, so a stream ended at the ceiling ends
    // between two events: the rest of an event is held until its end arrives.
    let mut held = BytesMut::new();
    loop {
        let read = {
            let next = up.read_response_body();
            tokio::pin!(next);
            let deadline = tokio::time::Instant::now() + idle;
            loop {
                let tick = match keepalive {
                    Some((every, _)) if at_boundary => (tokio::time::Instant::now() + every).min(deadline),
                    _ => deadline,
                };
                tokio::select! {
                    r = &mut next => break Some(r),
                    () = tokio::time::sleep_until(tick) => {
                        if tick >= deadline {
                            break None;
                        }
                        if let Some((_, bytes)) = keepalive {
                            write_body(session, ctx, Bytes::from_static(bytes)).await?;
                        }
                    }
                }
            }
        };
        let chunk = match read {
            Some(Ok(Some(c))) => c,
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                relay.metrics.upstream_errors.with_label_values(&["stream_io"]).inc();
                note_usage(ctx, adapter);
                end_with_error_event(
                    session,
                    ctx,
                    ErrorKind::Upstream,
                    &format!("upstream stream broke: {e}"),
                )
                .await?;
                return Ok(None);
            }
            None => {
                relay.metrics.upstream_errors.with_label_values(&["stream_idle"]).inc();
                note_usage(ctx, adapter);
                end_with_error_event(
                    session,
                    ctx,
                    ErrorKind::Upstream,
                    &format!("upstream stream was silent for more than {}s", idle.as_secs()),
                )
                .await?;
                return Ok(None);
            }
        };
        let out = adapter.push(chunk);
        note_usage(ctx, adapter);
        if let Some(ceiling) = ceiling
            && over_ceiling(ctx, ceiling, &mut priced)
        {
            relay.metrics.rejections.with_label_values(&["hard_cap"]).inc();
            end_with_error_event(session, ctx, ErrorKind::Billing, HARD_CAP_MESSAGE).await?;
            return Ok(None);
        }
        let out = match (out, ceiling) {
            (Some(out), Some(_)) => whole_events(&mut held, out),
            (out, _) => out,
        };
        if let Some(out) = out {
            at_boundary = out.ends_with(b"\n\n") || out.ends_with(b"\r\n\r\n");
            write_body(session, ctx, out).await?;
        }
    }
    if !held.is_empty() {
        write_body(session, ctx, held.split().freeze()).await?;
    }
    if let Some(rest) = adapter.finish() {
        note_usage(ctx, adapter);
        write_body(session, ctx, rest).await?;
    }
    session
        .write_response_body(Bytes::new(), true)
        .await
        .map_err(|e| client_gone(ctx, e))?;
    Ok(adapter.wire_failure().map(String::from))
}

/// How often, and with what bytes, a silent stream is kept alive: Gemini streams (long silent
/// thinking phases) get a blank line, which every SSE reader skips (an SSE comment for a Chat
/// Completions client, whose readers skip those); other streams none (Anthropic's send their own
/// pings).
fn keepalive(relay: &Relay, ctx: &RequestCtx, answer: &Answer<'_>) -> Option<(Duration, &'static [u8])> {
    let every = relay.config.timeouts.stream_keepalive.0;
    if every.is_zero() || !matches!(answer.kind, ResponseKind::Gemini | ResponseKind::CodeAssist) {
        return None;
    }
    match ctx.route.map(|r| r.dialect) {
        Some(Dialect::OpenAI) => Some((every, b": keep-alive\n\n")),
        _ => Some((every, b"\n")),
    }
}

/// A stream the client asked to receive as one JSON answer: read whole through the adapter,
/// then answered at once (an upstream failure inside it becomes an error answer).
async fn collect(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    up: &mut HttpSession,
    head: &pingora::http::ResponseHeader,
    adapter: &mut StreamAdapter,
) -> Result<(), AttemptError> {
    let idle = relay.config.timeouts.stream_idle.0;
    let mut out = BytesMut::new();
    let mut broke: Option<String> = None;
    loop {
        match tokio::time::timeout(idle, up.read_response_body()).await {
            Ok(Ok(Some(c))) => {
                if let Some(b) = adapter.push(c) {
                    out.extend_from_slice(&b);
                }
                note_usage(ctx, adapter);
                if out.len() > MAX_BUFFERED_ANSWER {
                    broke = Some("answer too large".into());
                    break;
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                relay.metrics.upstream_errors.with_label_values(&["stream_io"]).inc();
                broke = Some(format!("upstream stream broke: {e}"));
                break;
            }
            Err(_) => {
                relay.metrics.upstream_errors.with_label_values(&["stream_idle"]).inc();
                broke = Some(format!("upstream stream was silent for more than {}s", idle.as_secs()));
                break;
            }
        }
    }
    note_usage(ctx, adapter);
    let (status, body) = match broke {
        Some(message) => (502, crate::ingress::openai::openai_error(ErrorKind::Upstream, &message)),
        None => {
            if let Some(rest) = adapter.finish() {
                out.extend_from_slice(&rest);
            }
            note_usage(ctx, adapter);
            let status = if adapter.failed() {
                adapter.error_status().unwrap_or(502)
            } else {
                head.status.as_u16()
            };
            (status, out.freeze())
        }
    };
    if status >= 400
        && let Some(s) = ctx.settle.as_mut()
    {
        s.is_error = true;
    }
    ctx.status = status;
    let mut resp = headers::downstream_response(head, &relay.config.hide_headers, session.is_http2(), false, true)
        .map_err(AttemptError::Broken)?;
    resp.set_status(status).map_err(AttemptError::Broken)?;
    if status >= 400 {
        resp.insert_header("x-relay-error-source", ErrorSource::Upstream.as_str())
            .map_err(AttemptError::Broken)?;
    }
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")
        .map_err(AttemptError::Broken)?;
    resp.remove_header("transfer-encoding");
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
        .map_err(AttemptError::Broken)?;
    ctx.mark_first_byte();
    session
        .write_response_header(Box::new(resp))
        .await
        .map_err(|e| client_gone(ctx, e))?;
    session
        .write_response_body(body, true)
        .await
        .map_err(|e| client_gone(ctx, e))
}

/// Largest part of an event held back while waiting for its end (see [`whole_events`]); past
/// it, what is held goes out (a stream that is no SSE has no event ends to wait for).
const MAX_HELD_EVENT: usize = 1024 * 1024;

/// Appends `out` to `held` and takes from it what ends with an event boundary (a blank line,
/// `\n\n` or `\r\n\r\n`), if anything does.
fn whole_events(held: &mut BytesMut, out: Bytes) -> Option<Bytes> {
    held.extend_from_slice(&out);
    let lf = memchr::memmem::rfind(held, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::rfind(held, b"\n\r\n").map(|i| i + 3);
    let end = lf.max(crlf);
    let end = match end {
        Some(e) => e,
        None if held.len() > MAX_HELD_EVENT => held.len(),
        None => return None,
    };
    Some(held.split_to(end).freeze())
}

/// What a stream ended by `cost_limits.hard_cap` says, in the client's error event.
const HARD_CAP_MESSAGE: &str = "This API key's cost limit was reached while the answer streamed; it ends here";

/// Whether the usage the stream has reported so far costs more than the key may spend on this
/// request (`ceiling`: its reservation plus the room left at its admission). Priced only when the
/// usage changed since the last look (`priced`), which is a few times per stream: the usage
/// readers report it in the first and last events (Gemini in every chunk). No store round trip.
fn over_ceiling(ctx: &RequestCtx, ceiling: filters::SpendCeiling, priced: &mut crate::usage::TokenUsage) -> bool {
    let Some(s) = ctx.settle.as_ref() else { return false };
    if s.usage == *priced {
        return false;
    }
    *priced = s.usage;
    s.running_cost_nanos().is_some_and(|c| c > ceiling.nanos)
}

/// Keeps the usage read so far with the request, so it is counted however the stream ends.
fn note_usage(ctx: &mut RequestCtx, adapter: &StreamAdapter) {
    if let Some(s) = ctx.settle.as_mut() {
        s.usage = adapter.usage();
        if adapter.failed() {
            s.is_error = true;
        }
    }
}

async fn write_body(session: &mut Session, ctx: &mut RequestCtx, data: Bytes) -> Result<(), AttemptError> {
    session
        .write_response_body(data, false)
        .await
        .map_err(|e| client_gone(ctx, e))
}

fn client_gone(ctx: &mut RequestCtx, e: Box<pingora::Error>) -> AttemptError {
    ctx.client_disconnected = true;
    AttemptError::Broken(e)
}

/// A committed stream that the upstream broke: tell the client in the stream's own terms (its
/// dialect's error event), then end the response so the client does not wait.
async fn end_with_error_event(
    session: &mut Session,
    ctx: &mut RequestCtx,
    kind: ErrorKind,
    message: &str,
) -> Result<(), AttemptError> {
    if let Some(s) = ctx.settle.as_mut() {
        s.is_error = true;
    }
    let dialect = ctx.route.map_or(Dialect::Anthropic, |r| r.dialect);
    let event = match ctx.route.map(|r| r.endpoint) {
        Some(Endpoint::Responses | Endpoint::ResponsesCompact) => {
            crate::ingress::openai::responses_stream_error(message)
        }
        _ => {
            let ingress = crate::ingress::for_dialect(dialect).unwrap_or(&crate::ingress::anthropic::AnthropicMessages);
            ingress.stream_error(kind, message)
        }
    };
    write_body(session, ctx, event).await?;
    session
        .write_response_body(Bytes::new(), true)
        .await
        .map_err(|e| client_gone(ctx, e))?;
    Ok(())
}

/// Relays a complete (not streamed) answer: read whole (bounded) for its usage, then converted
/// into the client's dialect when the wire differs.
#[allow(clippy::too_many_arguments)]
async fn relay_complete(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    up: &mut HttpSession,
    head: &pingora::http::ResponseHeader,
    answer: &Answer<'_>,
) -> Result<(), AttemptError> {
    let idle = relay.config.timeouts.stream_idle.0.max(Duration::from_secs(1));
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(idle, up.read_response_body()).await {
            Ok(Ok(Some(c))) => {
                if buf.len() + c.len() > MAX_BUFFERED_ANSWER {
                    return Err(AttemptError::Final(RelayError::UpstreamProtocol(
                        "answer too large".into(),
                    )));
                }
                buf.extend_from_slice(&c);
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                relay.metrics.upstream_errors.with_label_values(&["io"]).inc();
                return Err(AttemptError::Final(RelayError::UpstreamUnreachable(format!(
                    "reading the answer: {e}"
                ))));
            }
            Err(_) => {
                relay.metrics.upstream_errors.with_label_values(&["timeout"]).inc();
                return Err(AttemptError::Final(RelayError::UpstreamTimeout(
                    "the answer stalled".into(),
                )));
            }
        }
    }
    let status = head.status.as_u16();
    let answer::Completed {
        body,
        usage,
        status: replaced,
    } = answer::complete_body(answer, status, &head.headers, buf.freeze());
    let status = replaced.unwrap_or(status);
    if let (Some(usage), Some(s)) = (usage, ctx.settle.as_mut()) {
        s.usage = usage;
    }
    let rewritten = answer::rewrites_body(answer, status);
    let mut resp = headers::downstream_response(head, &relay.config.hide_headers, session.is_http2(), false, true)
        .map_err(AttemptError::Broken)?;
    mark_head(head, &mut resp).map_err(AttemptError::Broken)?;
    if status != head.status.as_u16() {
        ctx.status = status;
        if let Some(s) = ctx.settle.as_mut() {
            s.is_error = true;
        }
        resp.set_status(status).map_err(AttemptError::Broken)?;
        resp.insert_header("x-relay-error-source", ErrorSource::Upstream.as_str())
            .map_err(AttemptError::Broken)?;
    }
    if rewritten && (answer.kind != ResponseKind::Anthropic || answer.conversion != Conversion::PassThrough) {
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")
            .map_err(AttemptError::Broken)?;
    }
    resp.remove_header("transfer-encoding");
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
        .map_err(AttemptError::Broken)?;
    let empty = body.is_empty();
    ctx.mark_first_byte();
    session
        .write_response_header(Box::new(resp))
        .await
        .map_err(|e| client_gone(ctx, e))?;
    if !empty {
        session
            .write_response_body(body, true)
            .await
            .map_err(|e| client_gone(ctx, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dialect_reaches_the_kinds_it_converts_to() {
        use AccountKind::*;
        let kinds = |op, scope| {
            let set = kinds_for(op, scope, false);
            AccountKind::ALL
                .into_iter()
                .filter(|k| set.contains(*k))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(Operation::Messages, Scope::Any),
            [ClaudeConsole, ClaudeOauth, Ccr, Bedrock]
        );
        assert_eq!(
            kinds(Operation::Chat, Scope::Any),
            AccountKind::ALL[..AccountKind::ALL.len() - 1]
        );
        let passthrough = kinds_for(Operation::Messages, Scope::Any, true);
        assert!(
            AccountKind::ALL
                .into_iter()
                .all(|k| passthrough.contains(k) == (k == ClaudePassthrough))
        );
        assert_eq!(kinds(Operation::Chat, Scope::Gemini), [GeminiApi, GeminiOauth]);
        assert_eq!(kinds(Operation::GeminiGenerate, Scope::Any), [GeminiApi, GeminiOauth]);
        assert_eq!(
            kinds(Operation::CodeAssistCountTokens, Scope::Any),
            [GeminiApi, GeminiOauth]
        );
        assert_eq!(
            kinds(Operation::Chat, Scope::Claude),
            [ClaudeConsole, ClaudeOauth, Ccr, Bedrock]
        );
        assert_eq!(
            kinds(Operation::Responses, Scope::Any),
            [OpenAi, AzureOpenAi, OpenAiOauth]
        );
    }

    #[test]
    fn whole_events_hold_the_rest_of_an_event() {
        let mut held = BytesMut::new();
        assert_eq!(
            whole_events(&mut held, Bytes::from_static(b"data: a\n\ndata: b")).unwrap(),
            "data: a\n\n"
        );
        assert_eq!(whole_events(&mut held, Bytes::from_static(b"c\n")), None);
        assert_eq!(
            whole_events(&mut held, Bytes::from_static(b"\ndata: d\r\n\r\nx")).unwrap(),
            "data: bc\n\ndata: d\r\n\r\n"
        );
        assert_eq!(&held[..], b"x");
    }
}
