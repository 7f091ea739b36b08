//! The dispatch: the attempt loop of a relayed request.
//!
//! Pingora's `upstream_peer` runs before the body is read and can replay at most 64 KiB, so the
//! body-carrying endpoints run here instead, inside `request_filter`: pick an account (scheduler),
//! build its peer, rewrite the request for it, send it through Pingora's pooled `Connector`, read
//! the response head, then either try the next account (nothing has reached the client yet) or
//! commit: stream the body to the client unchanged while the usage reader watches it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;

use super::body::ParsedBody;
use super::error::{ErrorSource, RelayError};
use super::rewrite::{SseModelRewriter, json_model};
use super::route::Endpoint;
use super::{Relay, RequestCtx, headers};
use crate::providers::anthropic_oauth::tokens::TokenError;
use crate::scheduler::health::{self, UnifiedLimits, Verdict};
use crate::scheduler::{Account, CooldownClass, PickRequest};
use crate::store::coord::{AccountHealth, HealthState};
use crate::usage::sse::{SseUsageParser, parse_json_usage};

/// Largest non-streamed upstream answer the relay holds to read its usage.
const MAX_BUFFERED_ANSWER: usize = 64 * 1024 * 1024;
/// Largest error body read from an upstream that is failed over (kept for a faithful replay).
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// An upstream refusal held back while other accounts are tried; replayed if all fail.
struct HeldAnswer {
    head: pingora::http::ResponseHeader,
    body: Bytes,
}

/// How an attempt ended without a committed answer.
enum AttemptError {
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

/// The store key of a sticky session: per client key, so keys never share sessions.
fn sticky_key(key_id: &str, session: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(key_id.as_bytes());
    h.update([0u8]);
    h.update(session.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// A failure the request itself could have caused, on the account that met it: whether it
/// counts against the account depends on what happens on the next one.
pub(super) struct Suspect {
    account: Arc<Account>,
    mark: AccountHealth,
    status: u16,
}

/// Relays a parsed request. Returns `Err` only when the client connection must not be reused.
///
/// A failover-class refusal that the request could have caused (see
/// [`health::request_dependent`]) does not take the account out of the pool at once. If the next
/// account refuses the same request with the same status, the request is the problem: the client
/// gets that answer and neither account is marked. Otherwise the failure counts as one key's
/// evidence against the account, which is marked once `scheduler.failover.evidence_keys`
/// different keys have met such failures there.
pub(super) async fn run(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: Bytes,
    parsed: &ParsedBody,
) -> pingora::Result<()> {
    let result = attempts(relay, session, ctx, body, parsed).await;
    settle_suspects(relay, ctx);
    result
}

/// Counts the held suspects as evidence against their accounts (the request went on and did not
/// fail the same way elsewhere), marking an account once enough keys met such failures there.
/// Runs as soon as the outcome is known: when an answer is committed, else at the end.
fn settle_suspects(relay: &Relay, ctx: &mut RequestCtx) {
    if ctx.suspects.is_empty() {
        return;
    }
    let key: Arc<str> = ctx.key.as_ref().map_or_else(|| Arc::from(""), |k| k.id.clone());
    let f = &relay.config.scheduler.failover;
    let window = f.evidence_window.0.as_millis() as i64;
    for s in ctx.suspects.drain(..) {
        if s.account
            .rt
            .corroborate(&key, now_ms(), window, f.evidence_keys as usize)
        {
            mark_account(relay, &s.account, s.mark);
        } else {
            tracing::info!(account = %s.account.name, status = s.status, "upstream refused a request; the account stays in the pool until more keys meet such failures");
        }
    }
}

async fn attempts(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: Bytes,
    parsed: &ParsedBody,
) -> pingora::Result<()> {
    let Some(route) = ctx.route else { return Ok(()) };
    let model = parsed.facts.model.clone().unwrap_or_default();
    let query = headers::strip_key_param(session.req_header().uri.query());
    let snapshot = relay.snapshot.load_full();
    let key = ctx.key.clone();
    let binding = key.as_ref().and_then(|k| k.bind.clone());
    let sched = &relay.config.scheduler;
    let sticky_ttl = sched.sticky_ttl.0;

    // One store round trip when the request belongs to a session.
    let sticky_key = match (&key, &parsed.facts.session) {
        (Some(k), Some(s)) => Some(sticky_key(&k.id, s)),
        _ => None,
    };
    let sticky = match &sticky_key {
        Some(sk) => relay.coord.sticky_get(sk, sticky_ttl).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "sticky session lookup failed; choosing from the pool");
            None
        }),
        None => None,
    };

    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut attempts = 0u32;
    let mut last_relay_err: Option<RelayError> = None;
    let mut held: Option<HeldAnswer> = None;
    loop {
        if attempts >= sched.failover.max_attempts || (attempts > 0 && ctx.start.elapsed() >= sched.failover.budget.0) {
            break;
        }
        let pick = PickRequest {
            model: &model,
            binding: binding.as_deref(),
            sticky: sticky.as_deref(),
            tried: &tried,
            now_ms: now_ms(),
        };
        let Some(account) = relay.scheduler.pick(&snapshot.pool, &pick) else {
            break;
        };
        tried.push(account.id.clone());
        let lease = match account.max_concurrency {
            Some(limit) => match relay.leases.acquire(format!("account:{}", account.id), limit).await {
                Ok(Some(g)) => Some(g),
                Ok(None) => {
                    relay.metrics.failovers.with_label_values(&["account_busy"]).inc();
                    continue; // at its cap: not an attempt, try the next account
                }
                Err(e) => {
                    // The store is the authority on the cap; without it, serve rather than refuse.
                    tracing::warn!(error = %e, account = %account.name, "account lease unavailable; serving without it");
                    None
                }
            },
            None => None,
        };
        attempts += 1;
        let upstream_model = account.upstream_model(&model).to_string();
        if let Some(s) = ctx.settle.as_mut() {
            s.account_id = Some(account.id.clone());
            s.account_rt = Some(account.rt.clone());
            s.model_known = account.names_model(&model);
            s.upstream_model = Some(upstream_model.clone());
        }
        let out_body = parsed.with_model(&body, &upstream_model);
        let path = account
            .base
            .path_and_query(route.endpoint.upstream_path(), query.as_deref());
        let rename = (upstream_model != model).then_some((upstream_model.as_str(), model.as_str()));
        let _in_flight = InFlightOn::new(&account);
        // Bind the session to this account when it commits a successful answer (see `attempt`).
        ctx.pending_sticky = match &sticky_key {
            Some(sk) if sticky.as_deref() != Some(&*account.id) => Some((sk.clone(), account.id.clone(), sticky_ttl)),
            _ => None,
        };
        // An OAuth token refused before its time is refreshed once and the request sent again.
        let mut token_retry = account.oauth.is_some();
        let outcome = loop {
            let (live, issued_at) = match oauth_credential(relay, &account).await {
                Ok(c) => c,
                Err(e) => break Err(e),
            };
            let auth_owned;
            let auth = match &live {
                Some(h) => {
                    auth_owned = (http::header::AUTHORIZATION, h.clone());
                    &auth_owned
                }
                None => &account.auth,
            };
            let mut req = headers::upstream_request(
                session.req_header(),
                &path,
                &account.base.host_header,
                auth,
                out_body.len(),
            )?;
            if account.oauth.is_some() {
                headers::merge_beta(&mut req, &relay.config.providers.anthropic.oauth.beta)?;
            }
            req.append_header(headers::HOPS, relay.hop_id.as_str())?;
            let result = attempt(
                relay,
                session,
                ctx,
                &account,
                req,
                out_body.clone(),
                route.endpoint,
                rename,
                token_retry,
            )
            .await;
            match result {
                Err(AttemptError::TokenRejected(answer, mark)) => {
                    token_retry = false;
                    let Some(issued) = issued_at else { continue };
                    let mark = match relay.oauth.refresh(&account, issued).await {
                        Ok(_) => continue,
                        // A refused refresh already took the account out of the pool.
                        Err(TokenError::Refresh(r)) if r.is_refusal() => None,
                        Err(_) => mark,
                    };
                    if !relay.config.scheduler.failover.statuses.contains(&401) {
                        // 401 is not failed over here: the client gets it as it was.
                        if let Some(h) = mark {
                            mark_account(relay, &account, h);
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
                if let Some(g) = lease {
                    ctx.holds.push(Box::new(g));
                }
                return Ok(());
            }
            Err(AttemptError::Retryable(e, mark, reason)) => {
                tracing::warn!(account = %account.name, error = %e.message(), "upstream attempt failed; trying the next account");
                relay.metrics.failovers.with_label_values(&[reason]).inc();
                if let Some(h) = mark {
                    mark_account(relay, &account, h);
                }
                last_relay_err = Some(e);
                held = None;
            }
            Err(AttemptError::Refused(answer, mark) | AttemptError::TokenRejected(answer, mark)) => {
                let status = answer.head.status.as_u16();
                let dependent = mark.as_ref().is_some_and(|h| health::request_dependent(status, h));
                if dependent && ctx.suspects.iter().any(|s| s.status == status) {
                    // The same request failed the same way on another account: it is the
                    // request's problem, not the accounts'.
                    ctx.suspects.clear();
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
                match mark {
                    Some(h) if dependent => ctx.suspects.push(Suspect {
                        account: account.clone(),
                        mark: h,
                        status,
                    }),
                    Some(h) => mark_account(relay, &account, h),
                    None => {}
                }
                held = Some(answer);
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
    if let Some(answer) = held {
        // Every attempt failed: the client gets the last upstream refusal as it was.
        return replay_refusal(relay, session, ctx, answer).await;
    }
    let err = last_relay_err.unwrap_or(RelayError::NoAccount(model));
    super::respond_error(relay, session, ctx, &err, ErrorSource::Relay).await
}

/// The bearer header of a `claude-oauth` account (refreshed first when expired) and the
/// `issued_at` of its token; `None` for accounts with a fixed credential.
async fn oauth_credential(
    relay: &Relay,
    account: &Arc<Account>,
) -> Result<(Option<http::HeaderValue>, Option<i64>), AttemptError> {
    if account.oauth.is_none() {
        return Ok((None, None));
    }
    match relay.oauth.credential(account).await {
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

/// Takes an account out of the pool here at once, and everywhere through the store.
fn mark_account(relay: &Relay, account: &Account, health: AccountHealth) {
    relay
        .scheduler
        .mark_shared(account, health, relay.coord.clone(), relay.store.clone(), &relay.tasks);
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
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        session.write_response_body(Some(answer.body), true).await?;
    }
    Ok(())
}

/// Sends the request and reads the response head, retrying on a fresh connection when a pooled
/// one turns out to be stale.
async fn send(
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
        let (mut up, reused) = match relay.connector.get_http_session(&*peer).await {
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
            up.write_request_header(Box::new(req.clone())).await?;
            up.write_request_body(body.clone(), true).await?;
            up.finish_request_body().await?;
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

#[allow(clippy::too_many_arguments)]
async fn attempt(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    account: &Account,
    req: RequestHeader,
    body: Bytes,
    endpoint: Endpoint,
    rename: Option<(&str, &str)>,
    token_retry: bool,
) -> Result<(), AttemptError> {
    let sent_at = Instant::now();
    // While the upstream thinks, watch the client: if it goes away, drop the upstream request
    // (which aborts it) instead of waiting minutes for an answer nobody will read.
    let client_gone = async {
        loop {
            match session.as_downstream_mut().read_body_or_idle(true).await {
                Err(e) => return e,
                Ok(_) => std::future::pending::<()>().await,
            }
        }
    };
    let (mut up, peer) = tokio::select! {
        r = send(relay, account, &req, &body) => r?,
        e = client_gone => {
            ctx.client_disconnected = true;
            relay.metrics.upstream_errors.with_label_values(&["client_gone"]).inc();
            return Err(AttemptError::Broken(e));
        }
    };
    let ttfb = sent_at.elapsed();
    relay
        .metrics
        .upstream_ttfb
        .with_label_values(&[endpoint.name()])
        .observe(ttfb.as_secs_f64());

    let Some(head) = up.response_header().cloned() else {
        return Err(AttemptError::Retryable(
            RelayError::UpstreamProtocol("no response head".into()),
            None,
            "io",
        ));
    };
    let status = head.status.as_u16();
    let now = now_ms();
    if let Some(u) = UnifiedLimits::from_headers(&head.headers, now / 1000) {
        account.rt.set_unified(u);
    }
    // A 401 on an OAuth token the relay believed valid goes back to the dispatch for one refresh.
    let token_rejected = status == 401 && token_retry;
    if token_rejected || status >= 400 && relay.config.scheduler.failover.statuses.contains(&status) {
        // Not committed yet: read the refusal (bounded) to classify it and keep it for replay.
        let body = read_error_body(relay, &mut up).await;
        let cooldown = |c: CooldownClass| account.cooldown(c, &relay.cooldowns);
        let verdict = health::classify(status, &head.headers, &body, &cooldown, now);
        up.shutdown().await;
        let held = HeldAnswer { head, body };
        return match (verdict, token_rejected) {
            (Verdict::Mark(h), true) => Err(AttemptError::TokenRejected(held, Some(h))),
            (Verdict::RequestProblem, true) => Err(AttemptError::TokenRejected(held, None)),
            (Verdict::Mark(h), false) => Err(AttemptError::Refused(held, Some(h))),
            (Verdict::RequestProblem, false) => {
                ctx.status = status;
                replay_refusal(relay, session, ctx, held)
                    .await
                    .map_err(AttemptError::Broken)
            }
        };
    }
    let is_sse = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    // Only successful answers carry a model to put back.
    let rename = rename.filter(|_| status < 300);
    if status >= 400
        && let Some(s) = ctx.settle.as_mut()
    {
        s.is_error = true;
    }
    ctx.status = status;
    if status < 400
        && let Some((sk, id, ttl)) = ctx.pending_sticky.take()
        && let Err(e) = relay.coord.sticky_set(&sk, &id, ttl).await
    {
        tracing::warn!(error = %e, "saving the sticky session failed");
    }

    // Committed: what failed before on other accounts was not this request's doing.
    settle_suspects(relay, ctx);
    let result = if is_sse {
        stream_sse(relay, session, ctx, &mut up, &head, rename).await
    } else {
        relay_buffered(relay, session, ctx, &mut up, &head, rename).await
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
                relay.connector.release_http_session(up, &*peer, None).await;
            }
            Ok(())
        }
        Err(e) => {
            up.shutdown().await;
            Err(e)
        }
    }
}

async fn read_error_body(relay: &Relay, up: &mut HttpSession) -> Bytes {
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

async fn stream_sse(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    up: &mut HttpSession,
    head: &pingora::http::ResponseHeader,
    rename: Option<(&str, &str)>,
) -> Result<(), AttemptError> {
    let idle = relay.config.timeouts.stream_idle.0;
    let mut resp = headers::downstream_response(
        head,
        &relay.config.hide_headers,
        session.is_http2(),
        false,
        rename.is_some(),
    )
    .map_err(AttemptError::Broken)?;
    mark_head(head, &mut resp).map_err(AttemptError::Broken)?;
    session
        .write_response_header(Box::new(resp), false)
        .await
        .map_err(AttemptError::Broken)?;

    let mut parser = SseUsageParser::new();
    let mut rewriter = rename.map(|(from, to)| SseModelRewriter::new(from, to));
    loop {
        let chunk = match tokio::time::timeout(idle, up.read_response_body()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                relay.metrics.upstream_errors.with_label_values(&["stream_io"]).inc();
                return end_with_error_event(session, ctx, &format!("upstream stream broke: {e}")).await;
            }
            Err(_) => {
                relay.metrics.upstream_errors.with_label_values(&["stream_idle"]).inc();
                return end_with_error_event(
                    session,
                    ctx,
                    &format!("upstream stream was silent for more than {}s", idle.as_secs()),
                )
                .await;
            }
        };
        parser.feed(&chunk);
        if let Some(s) = ctx.settle.as_mut() {
            s.usage = parser.usage();
            if parser.error().is_some() {
                s.is_error = true;
            }
        }
        let out = match rewriter.as_mut() {
            Some(r) => r.push(chunk),
            None => Some(chunk),
        };
        if let Some(out) = out {
            write_body(session, ctx, out).await?;
        }
    }
    if let Some(rest) = rewriter.as_mut().and_then(SseModelRewriter::finish) {
        write_body(session, ctx, rest).await?;
    }
    session
        .write_response_body(None, true)
        .await
        .map_err(|e| client_gone(ctx, e))?;
    Ok(())
}

async fn write_body(session: &mut Session, ctx: &mut RequestCtx, data: Bytes) -> Result<(), AttemptError> {
    session
        .write_response_body(Some(data), false)
        .await
        .map_err(|e| client_gone(ctx, e))
}

fn client_gone(ctx: &mut RequestCtx, e: Box<pingora::Error>) -> AttemptError {
    ctx.client_disconnected = true;
    AttemptError::Broken(e)
}

/// A committed stream that the upstream broke: tell the client in the stream's own terms (an
/// Anthropic `error` event), then end the response so the client does not wait.
async fn end_with_error_event(session: &mut Session, ctx: &mut RequestCtx, message: &str) -> Result<(), AttemptError> {
    if let Some(s) = ctx.settle.as_mut() {
        s.is_error = true;
    }
    let payload = serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}});
    let event = format!("event: error\ndata: {payload}\n\n");
    write_body(session, ctx, Bytes::from(event)).await?;
    session
        .write_response_body(None, true)
        .await
        .map_err(|e| client_gone(ctx, e))?;
    Ok(())
}

async fn relay_buffered(
    relay: &Relay,
    session: &mut Session,
    ctx: &mut RequestCtx,
    up: &mut HttpSession,
    head: &pingora::http::ResponseHeader,
    rename: Option<(&str, &str)>,
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
    let mut body = buf.freeze();
    if let Some((usage, _model)) = parse_json_usage(&body)
        && let Some(s) = ctx.settle.as_mut()
    {
        s.usage = usage;
    }
    if let Some((_, requested)) = rename {
        body = json_model(&body, requested);
    }
    let mut resp = headers::downstream_response(head, &relay.config.hide_headers, session.is_http2(), false, true)
        .map_err(AttemptError::Broken)?;
    mark_head(head, &mut resp).map_err(AttemptError::Broken)?;
    resp.remove_header("transfer-encoding");
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
        .map_err(AttemptError::Broken)?;
    let empty = body.is_empty();
    session
        .write_response_header(Box::new(resp), empty)
        .await
        .map_err(|e| client_gone(ctx, e))?;
    if !empty {
        session
            .write_response_body(Some(body), true)
            .await
            .map_err(|e| client_gone(ctx, e))?;
    }
    Ok(())
}
