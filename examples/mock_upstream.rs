//! A fast, standalone mock Anthropic upstream for load tests (`benches/load/`).
//!
//! `POST /v1/messages` answers the golden SSE stream (`shared/fixtures/responses/`) when the JSON
//! body has `"stream":true`, else a fixed JSON message with the same usage. The body is not
//! parsed: a substring search decides. `x-mock-chunk-delay-ms: N` splits the stream into about 13
//! chunks with N ms between them (the "slow stream" mode). Anything else gets 404.
//!
//! ```text
//! cargo run --release --example mock_upstream -- --listen 127.0.0.1:9001 [--threads 1]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use memchr::memmem;

const SSE: &[u8] = include_bytes!("../../shared/fixtures/responses/anthropic-messages-stream.sse");
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
}

fn wants_stream(body: &[u8]) -> bool {
    memmem::find(body, b"\"stream\":true").is_some() || memmem::find(body, b"\"stream\": true").is_some()
}

async fn messages(headers: HeaderMap, body: Bytes) -> Response {
    if !wants_stream(&body) {
        return (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            Bytes::from_static(JSON),
        )
            .into_response();
    }
    let delay_ms = headers
        .get("x-mock-chunk-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let body = if delay_ms == 0 {
        Body::from(Bytes::from_static(SSE))
    } else {
        let delay = Duration::from_millis(delay_ms);
        let chunk = SSE.len().div_ceil(SLOW_CHUNKS);
        let parts = SSE.chunks(chunk).map(Bytes::from_static);
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
    rt.block_on(async {
        let app = Router::new().route("/v1/messages", post(messages)).fallback(not_found);
        let listener = tokio::net::TcpListener::bind(args.listen).await.expect("bind --listen");
        eprintln!(
            "mock_upstream listening on {} ({} threads)",
            args.listen,
            args.threads.max(1)
        );
        // Small streamed writes must not wait for Nagle.
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.expect("serve");
    });
}
