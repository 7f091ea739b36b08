//! A scripted upstream on a real socket: each request it receives is recorded and answered with
//! the next reply of its script, in order, whatever its path; once the script is used up it
//! answers 500 with an OpenAI error naming the request, so a client making an unexpected call
//! fails loudly instead of hanging.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri, Version};
use axum::response::Response;

use super::mock::Seen;
use super::serve::{Served, serve};

/// One scripted answer: status, content type and the exact body bytes.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    /// A 200 SSE answer with these bytes.
    pub fn sse(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            content_type: "text/event-stream; charset=utf-8",
            body: body.into(),
        }
    }

    /// A 200 JSON answer.
    pub fn json(value: &serde_json::Value) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
        }
    }
}

#[derive(Default)]
struct ScriptState {
    seen: Mutex<Vec<Seen>>,
    replies: Mutex<VecDeque<Reply>>,
}

pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    state: Arc<ScriptState>,
    _served: Served,
}

impl ScriptedUpstream {
    /// Starts a plain HTTP/1.1 upstream that answers with `replies`, one per request, in order.
    pub async fn start(replies: Vec<Reply>) -> ScriptedUpstream {
        let state = Arc::new(ScriptState {
            seen: Mutex::new(Vec::new()),
            replies: Mutex::new(replies.into()),
        });
        let router = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone());
        let served = serve(router).await;
        ScriptedUpstream {
            addr: served.addr,
            state,
            _served: served,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many replies of the script are still unused.
    pub fn remaining(&self) -> usize {
        self.state.replies.lock().unwrap().len()
    }
}

async fn handle(
    State(state): State<Arc<ScriptState>>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state
        .seen
        .lock()
        .unwrap()
        .push(Seen::new(&method, &uri, version, &headers, &body));
    let next = state.replies.lock().unwrap().pop_front();
    let reply = next.unwrap_or_else(|| Reply {
        status: 500,
        content_type: "application/json",
        body: Bytes::from(
            serde_json::json!({"error": {
                "message": format!("scripted upstream: no reply left for {method} {uri}"),
                "type": "server_error", "code": null, "param": null
            }})
            .to_string(),
        ),
    });
    Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type)
        .header("x-request-id", "req_scripted")
        .body(Body::from(reply.body))
        .unwrap()
}
