//! Usage per client session: what one conversation of a client (a Claude Code or Codex session)
//! cost under one key, by model and by agent (the session's main agent and the sub-agents it
//! spawned).
//!
//! Storage is bounded three ways, the same on every backend:
//! - per session: at most [`MAX_MODELS_PER_SESSION`] model names (later ones are counted under
//!   [`OTHER_MODEL`]) and [`MAX_AGENTS_PER_SESSION`] named agents (later ones are counted together
//!   in [`SessionUsage::other_agents`]);
//! - per key: at most [`SessionBounds::per_key`] sessions, the most recently seen (a write that
//!   goes past the cap drops the least recently seen);
//! - in time: a session not seen for [`SessionBounds::retention_secs`] is gone (invisible to reads
//!   at once, deleted by the next write of its key, by the embedded store's purge, or by a Redis
//!   TTL).

use std::collections::BTreeMap;

use super::UsageCounters;

/// Model names one session keeps apart; later ones share [`OTHER_MODEL`].
pub const MAX_MODELS_PER_SESSION: usize = 50;
/// Named agents one session keeps apart; later ones share [`SessionUsage::other_agents`].
pub const MAX_AGENTS_PER_SESSION: usize = 200;
/// The model bucket of a session's models beyond [`MAX_MODELS_PER_SESSION`] (the name the
/// statistics use for models beyond their own bound too).
pub const OTHER_MODEL: &str = "other";

/// One agent of a session: a sub-agent, or a nested agent with the agent that spawned it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentUsage {
    /// The agent that spawned this one, when it said so (nested agents).
    pub parent: Option<String>,
    /// Unix seconds.
    pub first_seen: i64,
    /// Unix seconds.
    pub last_seen: i64,
    pub usage: UsageCounters,
}

impl AgentUsage {
    fn merge(&mut self, o: &AgentUsage) {
        if self.parent.is_none() {
            self.parent.clone_from(&o.parent);
        }
        self.first_seen = self.first_seen.min(o.first_seen);
        self.last_seen = self.last_seen.max(o.last_seen);
        self.usage.add(&o.usage);
    }
}

/// The usage of one client session of one key: what the statistics pipeline adds, and what a
/// store returns (then the sum of everything added).
///
/// Every request is counted once in `models` and once in exactly one of `main`, `agents` and
/// `other_agents`, so the models sum to the session's totals and so do the agents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionUsage {
    pub key_id: String,
    /// The client's own session id (validated by the relay: short, visible ASCII).
    pub session_id: String,
    /// Unix seconds.
    pub first_seen: i64,
    /// Unix seconds.
    pub last_seen: i64,
    pub models: BTreeMap<String, UsageCounters>,
    /// Requests without an agent id: the session's main agent.
    pub main: UsageCounters,
    /// Requests of named agents (sub-agents, teammates), by agent id.
    pub agents: BTreeMap<String, AgentUsage>,
    /// Requests of agents beyond [`MAX_AGENTS_PER_SESSION`].
    pub other_agents: UsageCounters,
}

impl SessionUsage {
    pub fn new(key_id: &str, session_id: &str, at: i64) -> Self {
        SessionUsage {
            key_id: key_id.to_string(),
            session_id: session_id.to_string(),
            first_seen: at,
            last_seen: at,
            ..Default::default()
        }
    }

    /// The session's totals (the sum of its models).
    pub fn totals(&self) -> UsageCounters {
        let mut t = UsageCounters::default();
        for c in self.models.values() {
            t.add(c);
        }
        t
    }

    /// Adds `delta` (of the same key and session), keeping the per-session bounds: a model beyond
    /// [`MAX_MODELS_PER_SESSION`] goes to [`OTHER_MODEL`], an agent beyond
    /// [`MAX_AGENTS_PER_SESSION`] to `other_agents`.
    pub fn merge(&mut self, delta: &SessionUsage) {
        self.first_seen = self.first_seen.min(delta.first_seen);
        self.last_seen = self.last_seen.max(delta.last_seen);
        for (model, c) in &delta.models {
            let name = if self.models.contains_key(model)
                || model == OTHER_MODEL
                || self.models.keys().filter(|m| *m != OTHER_MODEL).count() < MAX_MODELS_PER_SESSION
            {
                model.as_str()
            } else {
                OTHER_MODEL
            };
            self.models.entry(name.to_string()).or_default().add(c);
        }
        self.main.add(&delta.main);
        self.other_agents.add(&delta.other_agents);
        for (id, a) in &delta.agents {
            if let Some(mine) = self.agents.get_mut(id) {
                mine.merge(a);
            } else if self.agents.len() < MAX_AGENTS_PER_SESSION {
                self.agents.insert(id.clone(), a.clone());
            } else {
                self.other_agents.add(&a.usage);
            }
        }
    }
}

/// How many sessions a store keeps per key, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBounds {
    /// The most recently seen sessions kept per key (at least 1).
    pub per_key: usize,
    /// A session not seen for this many seconds is gone (at least 1).
    pub retention_secs: i64,
}

/// Where a page of sessions ends: the next page starts after this session (sessions are ordered
/// by `last_seen` descending, then by session id descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCursor {
    pub last_seen: i64,
    pub session_id: String,
}

impl SessionCursor {
    pub fn of(s: &SessionUsage) -> Self {
        SessionCursor {
            last_seen: s.last_seen,
            session_id: s.session_id.clone(),
        }
    }

    /// Whether `(last_seen, session_id)` comes after the cursor in listing order.
    pub fn is_before(&self, last_seen: i64, session_id: &str) -> bool {
        (last_seen, session_id) < (self.last_seen, self.session_id.as_str())
    }
}

/// One page of a key's sessions, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionPage {
    pub sessions: Vec<SessionUsage>,
    /// Set when more sessions follow.
    pub next: Option<SessionCursor>,
}

/// Sorts `(last_seen, session id)` pairs into listing order, skips those up to `cursor`, and
/// returns the first `limit` and whether more follow.
pub(crate) fn page_order(
    mut entries: Vec<(i64, String)>,
    cursor: Option<&SessionCursor>,
    limit: usize,
) -> (Vec<(i64, String)>, bool) {
    entries.sort_by(|a, b| b.cmp(a));
    entries.retain(|(last, id)| cursor.is_none_or(|c| c.is_before(*last, id)));
    let more = entries.len() > limit;
    entries.truncate(limit);
    (entries, more)
}

/// The counters as `field → value` without zeros (what both backends store; a field a newer
/// relay added is kept by the name it has, one an older relay lacks reads as zero).
pub(crate) fn counter_fields(c: &UsageCounters) -> BTreeMap<String, u64> {
    c.fields()
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

pub(crate) fn counters_from_fields(m: &BTreeMap<String, u64>) -> UsageCounters {
    let mut c = UsageCounters::default();
    for (k, v) in m {
        c.set_field(k, *v);
    }
    c
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn one(requests: u64) -> UsageCounters {
        UsageCounters {
            requests,
            input_tokens: 10 * requests,
            ..Default::default()
        }
    }

    #[test]
    fn merge_keeps_the_bounds() {
        let mut s = SessionUsage::new("k", "s", 100);
        for i in 0..MAX_MODELS_PER_SESSION + 5 {
            let mut d = SessionUsage::new("k", "s", 100 + i as i64);
            d.models.insert(format!("m{i}"), one(1));
            d.main = one(1);
            s.merge(&d);
        }
        assert_eq!(s.models.len(), MAX_MODELS_PER_SESSION + 1);
        assert_eq!(s.models[OTHER_MODEL].requests, 5);
        assert_eq!(s.totals().requests, (MAX_MODELS_PER_SESSION + 5) as u64);
        assert_eq!(
            (s.first_seen, s.last_seen),
            (100, 100 + MAX_MODELS_PER_SESSION as i64 + 4)
        );

        for i in 0..MAX_AGENTS_PER_SESSION + 3 {
            let mut d = SessionUsage::new("k", "s", 50);
            d.agents.insert(
                format!("a{i:04}"),
                AgentUsage {
                    parent: (i % 2 == 1).then(|| "p".to_string()),
                    first_seen: 50,
                    last_seen: 60,
                    usage: one(2),
                },
            );
            s.merge(&d);
        }
        assert_eq!(s.agents.len(), MAX_AGENTS_PER_SESSION);
        assert_eq!(s.other_agents.requests, 6);
        assert_eq!(s.first_seen, 50);
        assert_eq!(s.agents["a0001"].parent.as_deref(), Some("p"));
        // A known agent still adds up past the cap.
        let mut d = SessionUsage::new("k", "s", 70);
        d.agents.insert(
            "a0000".into(),
            AgentUsage {
                parent: None,
                first_seen: 70,
                last_seen: 70,
                usage: one(1),
            },
        );
        s.merge(&d);
        assert_eq!(s.agents["a0000"].usage.requests, 3);
        assert_eq!((s.agents["a0000"].first_seen, s.agents["a0000"].last_seen), (50, 70));
    }

    #[test]
    fn pages_are_newest_first_and_resume_after_the_cursor() {
        let e = vec![
            (5, "a".to_string()),
            (7, "b".to_string()),
            (7, "c".to_string()),
            (1, "d".to_string()),
        ];
        let (p, more) = page_order(e.clone(), None, 2);
        assert_eq!(p, vec![(7, "c".to_string()), (7, "b".to_string())]);
        assert!(more);
        let c = SessionCursor {
            last_seen: 7,
            session_id: "b".into(),
        };
        let (p, more) = page_order(e, Some(&c), 2);
        assert_eq!(p, vec![(5, "a".to_string()), (1, "d".to_string())]);
        assert!(!more);
    }
}
