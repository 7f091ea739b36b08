//! Which client session and agent a request belongs to, for the usage per session (see
//! [`crate::store::client_sessions`]).
//!
//! Recorded sources, first found wins:
//! - Claude Code: the `x-claude-code-session-id` header, else the `session_id` inside
//!   `metadata.user_id` (what the sticky-session parser found there);
//! - Codex: the `session-id` header (`session_id` from older versions).
//!
//! Nothing else is recorded as a session: `prompt_cache_key`, Gemini's `user_prompt_id` and the
//! hash of a cached system prompt serve stickiness but are no client's session id.
//!
//! Claude Code names the agent of a request in `x-claude-code-agent-id` (only on requests of a
//! sub-agent it spawned: fresh per spawn, stable per name for teammates) and the agent that
//! spawned it in `x-claude-code-parent-agent-id` (only for nested agents). A request without an
//! agent id is the session's main agent. Agent ids are no user identifiers: they are only ever
//! shown inside their session.
//!
//! Every id is checked: 1 to [`MAX_ID_LEN`] visible ASCII characters. A session id that fails is
//! not recorded (the request is still counted in the usage statistics); an agent id that fails
//! counts the request under the main agent, a parent id that fails is left out.

use std::sync::Arc;

/// The longest session or agent id recorded.
pub const MAX_ID_LEN: usize = 128;

/// The session (and agent) of one request, carried by its [`super::UsageEvent`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionTag {
    /// The client's session id.
    pub id: Arc<str>,
    /// The sub-agent that sent the request; `None` for the session's main agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Arc<str>>,
    /// The agent that spawned `agent` (nested agents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Arc<str>>,
}

/// A session or agent id worth recording: 1 to [`MAX_ID_LEN`] visible ASCII characters.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

use http::HeaderName;

/// The names looked up on every request, parsed once.
const SESSION_ID: HeaderName = HeaderName::from_static("x-claude-code-session-id");
const CODEX_SESSION_ID: HeaderName = HeaderName::from_static("session-id");
const CODEX_OLD_SESSION_ID: HeaderName = HeaderName::from_static("session_id");
const AGENT_ID: HeaderName = HeaderName::from_static("x-claude-code-agent-id");
const PARENT_AGENT_ID: HeaderName = HeaderName::from_static("x-claude-code-parent-agent-id");

fn header<'h>(h: &'h http::HeaderMap, name: &HeaderName) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

impl SessionTag {
    /// The session of a request from its headers and the sticky-session id the body parser found
    /// (`cc:<id>` when it came from Claude Code's header or `metadata.user_id`).
    pub fn from_request(headers: &http::HeaderMap, sticky: Option<&str>) -> Option<SessionTag> {
        let id = header(headers, &SESSION_ID)
            .filter(|s| !s.is_empty())
            .or_else(|| sticky.and_then(|s| s.strip_prefix("cc:")))
            .or_else(|| {
                header(headers, &CODEX_SESSION_ID)
                    .filter(|s| !s.is_empty())
                    .or_else(|| header(headers, &CODEX_OLD_SESSION_ID))
            })?;
        if !valid_id(id) {
            return None;
        }
        let agent = header(headers, &AGENT_ID).filter(|a| valid_id(a));
        let parent = agent.and(header(headers, &PARENT_AGENT_ID)).filter(|p| valid_id(p));
        Some(SessionTag {
            id: id.into(),
            agent: agent.map(Into::into),
            parent: parent.map(Into::into),
        })
    }

    /// The bounded label of the metrics: `main` or `subagent`.
    pub fn agent_label(&self) -> &'static str {
        if self.agent.is_some() { "subagent" } else { "main" }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn sources_and_agents() {
        let h = headers(&[("x-claude-code-session-id", "s-1")]);
        let t = SessionTag::from_request(&h, Some("cc:other")).unwrap();
        assert_eq!((&*t.id, t.agent.as_deref(), t.agent_label()), ("s-1", None, "main"));

        let t = SessionTag::from_request(&headers(&[]), Some("cc:from-metadata")).unwrap();
        assert_eq!(&*t.id, "from-metadata");
        // Stickiness sources that are no client session id are not recorded.
        for sticky in ["codex:pck", "gemini:prompt", "sys:abcd"] {
            assert_eq!(SessionTag::from_request(&headers(&[]), Some(sticky)), None);
        }
        let t = SessionTag::from_request(&headers(&[("session_id", "codex-old")]), Some("codex:codex-old")).unwrap();
        assert_eq!(&*t.id, "codex-old");
        let t = SessionTag::from_request(&headers(&[("session-id", "codex-new")]), None).unwrap();
        assert_eq!(&*t.id, "codex-new");

        let h = headers(&[
            ("x-claude-code-session-id", "s"),
            ("x-claude-code-agent-id", "agent-7"),
            ("x-claude-code-parent-agent-id", "agent-3"),
        ]);
        let t = SessionTag::from_request(&h, None).unwrap();
        assert_eq!(
            (t.agent.as_deref(), t.parent.as_deref()),
            (Some("agent-7"), Some("agent-3"))
        );
        assert_eq!(t.agent_label(), "subagent");
        // A parent without an agent means nothing.
        let h = headers(&[
            ("x-claude-code-session-id", "s"),
            ("x-claude-code-parent-agent-id", "p"),
        ]);
        assert_eq!(SessionTag::from_request(&h, None).unwrap().parent, None);
    }

    #[test]
    fn garbage_is_dropped() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in [long.as_str(), "has space", "tab\there", ""] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(valid_id(&"x".repeat(MAX_ID_LEN)));
        assert_eq!(
            SessionTag::from_request(&headers(&[]), Some(&format!("cc:{long}"))),
            None
        );
        assert_eq!(SessionTag::from_request(&headers(&[]), Some("cc:a b")), None);
        // A bad agent id counts under the main agent; a bad parent is left out.
        let h = headers(&[
            ("x-claude-code-session-id", "s"),
            ("x-claude-code-agent-id", long.as_str()),
        ]);
        assert_eq!(SessionTag::from_request(&h, None).unwrap().agent, None);
        let h = headers(&[
            ("x-claude-code-session-id", "s"),
            ("x-claude-code-agent-id", "a"),
            ("x-claude-code-parent-agent-id", "p q"),
        ]);
        let t = SessionTag::from_request(&h, None).unwrap();
        assert_eq!((t.agent.as_deref(), t.parent), (Some("a"), None));
        // Non-ASCII header bytes are not a session id.
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-claude-code-session-id",
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(SessionTag::from_request(&h, None), None);
    }
}
