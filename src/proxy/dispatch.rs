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
use crate::scheduler::Account;
use crate::usage::sse::{SseUsageParser, parse_json_usage};

/// Accounts tried for one request before giving up (connect failures only, in this version).
const MAX_ATTEMPTS: usize = 3;
/// Largest non-streamed upstream answer the relay holds to read its usage.
const MAX_BUFFERED_ANSWER: usize = 64 * 1024 * 1024;

/// How an attempt ended without a committed answer.
enum AttemptError {
    /// Nothing reached the client; another account may be tried.
    Retryable(RelayError),
    /// Nothing reached the client, but trying again elsewhere would be wrong (e.g. a timeout on
    /// a request the upstream may still be running).
    Final(RelayError),
    /// The answer was committed and then broke; the client connection must be closed.
    Broken(Box<pingora::Error>),
}

/// Relays a parsed request. Returns `Err` only when the client connection must not be reused.
pub(super) async fn run(
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
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_err: Option<RelayError> = None;

    while tried.len() < MAX_ATTEMPTS {
        let Some(account) = relay.scheduler.pick(&snapshot.pool, &model, &tried) else {
            break;
        };
        tried.push(account.id.clone());
        let upstream_model = account.upstream_model(&model).to_string();
        if let Some(s) = ctx.settle.as_mut() {
            s.account_id = Some(account.id.clone());
            s.upstream_model = Some(upstream_model.clone());
        }
        let out_body = parsed.with_model(&body, &upstream_model);
        let path = account
            .base
            .path_and_query(route.endpoint.upstream_path(), query.as_deref());
        let req = headers::upstream_request(
            session.req_header(),
            &path,
            &account.base.host_header,
            &account.auth,
            out_body.len(),
        )?;
        let rename = (upstream_model != model).then_some((upstream_model.as_str(), model.as_str()));
        match attempt(relay, session, ctx, &account, req, out_body, route.endpoint, rename).await {
            Ok(()) => return Ok(()),
            Err(AttemptError::Retryable(e)) => {
                tracing::warn!(account = %account.name, error = %e.message(), "upstream attempt failed; trying the next account");
                last_err = Some(e);
            }
            Err(AttemptError::Final(e)) => {
                last_err = Some(e);
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
    let err = last_err.unwrap_or(RelayError::NoAccount(model));
    super::respond_error(relay, session, ctx, &err, ErrorSource::Relay).await
}

/// Sends the request and reads the response head, retrying on a fresh connection when a pooled
/// one turns out to be stale.
async fn send(
    relay: &Relay,
    account: &Account,
    req: &RequestHeader,
    body: &Bytes,
) -> Result<(HttpSession, Arc<pingora::upstreams::peer::HttpPeer>), AttemptError> {
    let peer = relay.peers.get(&account.base, account.proxy.as_deref()).await.map_err(AttemptError::Retryable)?;
    let head_timeout = relay.config.timeouts.response_head.0;
    for _ in 0..3 {
        let (mut up, reused) = match relay.connector.get_http_session(&*peer).await {
            Ok(s) => s,
            Err(e) => {
                relay.peers.forget(&account.base);
                relay.metrics.upstream_errors.with_label_values(&["connect"]).inc();
                return Err(AttemptError::Retryable(RelayError::UpstreamUnreachable(e.to_string())));
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
                return Err(AttemptError::Retryable(RelayError::UpstreamUnreachable(e.to_string())));
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
    Err(AttemptError::Retryable(RelayError::UpstreamUnreachable(
        "connection failed repeatedly".into(),
    )))
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
) -> Result<(), AttemptError> {
    let sent_at = Instant::now();
    let (mut up, peer) = send(relay, account, &req, &body).await?;
    let ttfb = sent_at.elapsed();
    relay
        .metrics
        .upstream_ttfb
        .with_label_values(&[endpoint.name()])
        .observe(ttfb.as_secs_f64());

    let Some(head) = up.response_header().cloned() else {
        return Err(AttemptError::Retryable(RelayError::UpstreamProtocol(
            "no response head".into(),
        )));
    };
    let status = head.status.as_u16();
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
    let mut resp = headers::downstream_response(head, session.is_http2(), false, rename.is_some())
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
    let mut resp = headers::downstream_response(head, session.is_http2(), false, true).map_err(AttemptError::Broken)?;
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
