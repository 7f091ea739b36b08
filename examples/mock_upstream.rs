//! A fast, standalone mock Anthropic upstream for load tests (`benches/load/`).
//!
//! `POST /v1/messages` answers the golden SSE stream (`tests/fixtures/responses/`) when the JSON
//! body has `"stream":true`, else a fixed JSON message with the same usage. The body is not
//! parsed: a substring search decides. `x-mock-chunk-delay-ms: N` splits the stream into about 13
//! chunks with N ms between them (the "slow stream" mode). `POST /v1/chat/completions` does the
//! same with OpenAI's Chat Completions (the golden chunk stream, its usage chunk only when the
//! request asks for it, or one `chat.completion`). `POST /v1beta/models/{model}:generateContent`
//! and `:streamGenerateContent` answer like the Gemini API (the golden Gemini SSE, or one JSON
//! answer; the method in the path decides). Anything else gets 404.
//!
//! `--status N` makes it a failing upstream: every request (any method, any path) gets status N
//! with an Anthropic error body, e.g. for 429
//! `{"type":"error","error":{"type":"rate_limit_error","message":"mock 429"}}` and `retry-after: 1`
//! (`--retry-after S` changes it; 0 leaves the header out).
//!
//! `GET /_mock/stats` (never failed) answers `{"requests":N}`: the requests answered so far, that
//! route excluded, so a load test can see how many reached this upstream.
//!
//! `--tls-cert F --tls-key K` serves HTTPS instead (ALPN `h2`, then `http/1.1`), as the real APIs
//! do: the relay then speaks HTTP/2 to it, many streams on one connection (a relay trusts the
//! certificate through `SSL_CERT_FILE`).
//!
//! ```text
//! cargo run --release --example mock_upstream -- --listen 127.0.0.1:9001 [--threads 1] [--status 429]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use memchr::memmem;

const SSE: &[u8] = include_bytes!("../tests/fixtures/responses/anthropic-messages-stream.sse");
const CHAT_SSE: &[u8] = include_bytes!("../tests/fixtures/responses/openai-chat-stream-include-usage.sse");
const CHAT_JSON: &[u8] = br#"{"id":"chatcmpl-mock","object":"chat.completion","created":1795781428,"model":"gpt-5","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from mock upstream!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":7,"total_tokens":31,"prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
const GEMINI_SSE: &[u8] = include_bytes!("../tests/fixtures/responses/gemini-stream-alt-sse.sse");
const GEMINI_JSON: &[u8] = br#"{"candidates":[{"content":{"parts":[{"text":"Hello from mock upstream!"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":24,"candidatesTokenCount":7,"totalTokenCount":31,"cachedContentTokenCount":3},"modelVersion":"gemini-2.5-pro","responseId":"mock"}"#;
const JSON: &[u8] = br#"{"id":"msg_mock","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello from mock upstream!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":21,"cache_creation_input_tokens":5,"cache_read_input_tokens":3,"output_tokens":7}}"#;
/// Number of writes the slow-stream mode splits the golden stream into (about).
const SLOW_CHUNKS: usize = 13;

#[derive(Parser)]
#[command(about = "Mock Anthropic upstream for load tests")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Answer every request with this status and an Anthropic error body (e.g. 429, 529, 500).
    #[arg(long, value_parser = clap::value_parser!(u16).range(400..=599))]
    status: Option<u16>,
    /// `retry-after` seconds sent with `--status 429` (0: no header).
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Serve HTTPS with this certificate chain (PEM), HTTP/2 or HTTP/1.1 by ALPN.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// What every handler shares.
struct Mock {
    /// Requests answered (except `/_mock/stats`).
    requests: AtomicU64,
    /// `--status`: the status and the prebuilt error answer.
    fail: Option<(StatusCode, Bytes)>,
    retry_after: Option<HeaderValue>,
}

/// The Anthropic error type for a status, as the real API names it.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn error_body(status: u16) -> Bytes {
    Bytes::from(format!(
        r#"{{"type":"error","error":{{"type":"{}","message":"mock {status}"}}}}"#,
        error_type(status)
    ))
}

/// The answer of a `--status` mock, to any request.
async fn failing(State(mock): State<Arc<Mock>>) -> Response {
    mock.requests.fetch_add(1, Ordering::Relaxed);
    let Some((status, body)) = &mock.fail else {
        return not_found().await;
    };
    let mut r = (
        *status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.clone(),
    )
        .into_response();
    if let Some(v) = &mock.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, v.clone());
    }
    r
}

async fn stats(State(mock): State<Arc<Mock>>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        format!(r#"{{"requests":{}}}"#, mock.requests.load(Ordering::Relaxed)),
    )
        .into_response()
}

fn wants_stream(body: &[u8]) -> bool {
    memmem::find(body, b"\"stream\":true").is_some() || memmem::find(body, b"\"stream\": true").is_some()
}

async fn messages(State(mock): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    answer(&mock, &headers, &body, JSON, SSE)
}

async fn chat(State(mock): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    let sse = if memmem::find(&body, b"\"include_usage\":true").is_some() {
        CHAT_SSE
    } else {
        // Without the usage chunk (the last `data:` line before `[DONE]`).
        let usage = memmem::rfind(CHAT_SSE, b"data: {").unwrap_or(CHAT_SSE.len());
        let done = memmem::rfind(CHAT_SSE, b"data: [DONE]").unwrap_or(CHAT_SSE.len());
        static STRIPPED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        STRIPPED.get_or_init(|| [&CHAT_SSE[..usage], &CHAT_SSE[done..]].concat())
    };
    answer(&mock, &headers, &body, CHAT_JSON, sse)
}

async fn gemini(State(mock): State<Arc<Mock>>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let stream = uri.path().ends_with(":streamGenerateContent");
    answer_as(&mock, &headers, stream, GEMINI_JSON, GEMINI_SSE)
}

fn answer(mock: &Mock, headers: &HeaderMap, body: &[u8], json: &'static [u8], sse: &'static [u8]) -> Response {
    answer_as(mock, headers, wants_stream(body), json, sse)
}

fn answer_as(mock: &Mock, headers: &HeaderMap, stream: bool, json: &'static [u8], sse: &'static [u8]) -> Response {
    mock.requests.fetch_add(1, Ordering::Relaxed);
    if !stream {
        return (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            Bytes::from_static(json),
        )
            .into_response();
    }
    let delay_ms = headers
        .get("x-mock-chunk-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let body = if delay_ms == 0 {
        Body::from(Bytes::from_static(sse))
    } else {
        let delay = Duration::from_millis(delay_ms);
        let chunk = sse.len().div_ceil(SLOW_CHUNKS);
        let parts = sse.chunks(chunk).map(Bytes::from_static);
        let stream = futures_util::stream::unfold((parts, true), move |(mut parts, first)| async move {
            let next = parts.next()?;
            if !first {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<Bytes, std::io::Error>(next), (parts, false)))
        });
        Body::from_stream(stream)
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn unknown(State(mock): State<Arc<Mock>>) -> Response {
    mock.requests.fetch_add(1, Ordering::Relaxed);
    not_found().await
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "mock: unknown path").into_response()
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mock = Arc::new(Mock {
        requests: AtomicU64::new(0),
        fail: args
            .status
            .map(|s| (StatusCode::from_u16(s).expect("--status is 400..=599"), error_body(s))),
        retry_after: (args.status == Some(429) && args.retry_after > 0).then(|| HeaderValue::from(args.retry_after)),
    });
    rt.block_on(async {
        let stats_route = Router::new().route("/_mock/stats", get(stats));
        let app = match args.status {
            None => stats_route
                .route("/v1/messages", post(messages))
                .route("/v1/chat/completions", post(chat))
                .route("/v1beta/models/{*call}", post(gemini))
                .fallback(unknown),
            Some(_) => stats_route.fallback(failing),
        }
        .with_state(mock);
        let listener = tokio::net::TcpListener::bind(args.listen).await.expect("bind --listen");
        eprintln!(
            "mock_upstream listening on {} ({} threads){}",
            args.listen,
            args.threads.max(1),
            args.status
                .map(|s| format!(", answering {s} to everything"))
                .unwrap_or_default()
        );
        if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
            serve_tls(listener, app, cert, key).await;
            return;
        }
        // Small streamed writes must not wait for Nagle.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.expect("serve");
    });
}

/// HTTPS with ALPN `h2` then `http/1.1`, each connection served by hyper's automatic builder.
async fn serve_tls(listener: tokio::net::TcpListener, app: Router, cert: std::path::PathBuf, key: std::path::PathBuf) {
    use claude_relay::tls::{CertFiles, ReloadingCert, server_config};
    let cert = ReloadingCert::load("mock", CertFiles { cert, key }).expect("--tls-cert / --tls-key");
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(Arc::new(cert)).expect("TLS configuration"));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = hyper::service::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req).await }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
