//! The Code Assist project of each `gemini-oauth` account: the one its settings name, else the
//! one found for it once, as Gemini CLI finds it, and kept.
//!
//! Finding it: `POST {base}/v1internal:loadCodeAssist` names the project of an account that has
//! one (`cloudaicompanionProject`, a string or `{id}`). An account that Code Assist does not know
//! yet (no `currentTier`) is onboarded on the tier it offers by default (`free-tier` for a
//! personal account): `POST …:onboardUser` answers a long-running operation, asked again
//! (`GET {base}/v1internal/{name}`) every `onboard_poll` until it is done, for at most
//! `onboard_wait`; its `response.cloudaicompanionProject.id` is the project. An account that Code
//! Assist knows without a project (a paid tier) needs its `project_id` set.
//!
//! Discovery runs once at a time per account: requests that need the project while it runs wait
//! for the same outcome (a failure is answered again for 30 s to requests with the same token,
//! so that an account that needs its `project_id` set does not cost every request a lookup). It runs as its own task, so a request that goes away does not cut it
//! short. The project found is kept in the account's [`Project`] cell (which outlives snapshot
//! reloads, like token cells) and written into its stored token state (`OAuthMeta.project_id`)
//! under the token lock, so that neither a refresh nor this write loses the other.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::settings::GoogleOAuthSettings;
use crate::credentials::client::OAuthClient;
use crate::credentials::{Holder, Tokens};
use crate::lifecycle::Tasks;
use crate::outbound::OutboundProxy;
use crate::providers::UpstreamBase;
use crate::providers::gemini::{CODE_ASSIST_VERSION, Project};

/// What project discovery reads of an account besides what its tokens do: where its Code Assist
/// requests go.
pub trait CodeAssistHolder: Holder {
    fn code_assist_base(&self) -> &UpstreamBase;
}

/// The outcome of a discovery, as every request waiting for it gets it.
type Outcome = Option<Result<Arc<String>, String>>;

/// How long a discovery that failed answers its failure again at once to requests with the same
/// token (an account that needs its `project_id` set would otherwise cost every request a
/// lookup); a new token tries again at once.
const FAILURE_MEMORY: Duration = Duration::from_secs(30);

/// One account's project cell, what this instance found for it that the store does not show yet,
/// and the discovery running for it.
struct Slot {
    project: Arc<Project>,
    /// Found here and not yet seen in a snapshot's record: kept when a reload comes before the
    /// write (and for accounts of `relay.yaml`, which are not stored).
    found: Option<String>,
    running: Option<watch::Receiver<Outcome>>,
    /// The last failure: when, with which token, why.
    failed: Option<(Instant, HeaderValue, String)>,
}

impl Slot {
    fn new(project: Option<String>) -> Slot {
        Slot {
            project: Arc::new(Project::new(project)),
            found: None,
            running: None,
            failed: None,
        }
    }
}

/// The project cells of the `gemini-oauth` accounts, and their discovery.
pub struct Projects<A> {
    client: Arc<OAuthClient>,
    settings: GoogleOAuthSettings,
    tokens: Arc<Tokens<A>>,
    tasks: Tasks,
    slots: Mutex<HashMap<Arc<str>, Slot>>,
}

impl<A: Holder> Projects<A> {
    pub fn new(client: Arc<OAuthClient>, settings: GoogleOAuthSettings, tokens: Arc<Tokens<A>>, tasks: Tasks) -> Self {
        Projects {
            client,
            settings,
            tokens,
            tasks,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The project cell of an account for a new snapshot, given the project its record names
    /// (its settings' `project_id`, else the one found and stored): the same cell as before
    /// unless the record's project changed, so that a project found meanwhile is not lost.
    pub fn cell_for(&self, id: &Arc<str>, known: Option<String>) -> Arc<Project> {
        let mut slots = self.slots();
        let slot = slots.entry(id.clone()).or_insert_with(|| Slot::new(known.clone()));
        let current = slot.project.get();
        match known {
            Some(k) => {
                // The record's project wins (set by an admin, or found by another instance).
                slot.found = None;
                if current.as_deref() != Some(&k) {
                    slot.project.set(k);
                }
            }
            None if slot.found.is_some() => {}
            // The record lost its project (new tokens, or the setting was removed): find anew.
            None if current.is_some() => slot.project = Arc::new(Project::new(None)),
            None => {}
        }
        slot.project.clone()
    }

    /// The project an account's requests go to now, when known.
    pub fn known(&self, id: &str) -> Option<Arc<String>> {
        self.slots().get(id).and_then(|s| s.project.get())
    }

    /// Forgets the cells of accounts that no longer exist.
    pub fn retain(&self, live_ids: &HashSet<&str>) {
        self.slots().retain(|id, _| live_ids.contains(&**id));
    }
}

impl<A: CodeAssistHolder> Projects<A> {
    /// The account's project: the known one at once, else the one discovery finds (started now,
    /// or already running for another request). `bearer` is the account's live
    /// `Authorization` header.
    pub async fn project(self: &Arc<Self>, account: &A, bearer: &HeaderValue) -> Result<Arc<String>, String> {
        let mut outcome = {
            let mut slots = self.slots();
            let slot = slots.entry(account.id().clone()).or_insert_with(|| Slot::new(None));
            if let Some(p) = slot.project.get() {
                return Ok(p);
            }
            if let Some((at, token, why)) = &slot.failed
                && at.elapsed() < FAILURE_MEMORY
                && token == bearer
            {
                return Err(why.clone());
            }
            match &slot.running {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    slot.running = Some(rx.clone());
                    self.spawn_discovery(account, bearer.clone(), tx);
                    rx
                }
            }
        };
        match outcome.wait_for(Option::is_some).await {
            Ok(done) => done
                .clone()
                .unwrap_or_else(|| Err("project discovery ended without an outcome".into())),
            Err(_) => Err("project discovery stopped before it finished".into()),
        }
    }

    fn spawn_discovery(self: &Arc<Self>, account: &A, bearer: HeaderValue, tx: watch::Sender<Outcome>) {
        let this = self.clone();
        let id = account.id().clone();
        let name = account.name().to_string();
        let base = account.code_assist_base().clone();
        let proxy = account.proxy().cloned();
        let stored = account.stored();
        self.tasks.spawn_work("code assist project discovery", async move {
            let stop = this.tasks.token();
            let found = tokio::select! {
                r = discover(&this.client, &this.settings, &base, &bearer, proxy.as_ref()) => r,
                () = stop.cancelled() => Err("the relay is shutting down".into()),
            };
            let outcome = match found {
                Ok(project) => {
                    tracing::info!(account = %name, project = %project, "Code Assist project found");
                    let kept = this.keep(&id, project.clone());
                    if stored
                        && let Err(e) = this
                            .tokens
                            .edit_meta(&id, &name, |m| m.project_id = Some(project.clone()))
                            .await
                    {
                        tracing::warn!(account = %name, error = %e, "the Code Assist project found is kept here but not saved; it is looked up again after a restart");
                    }
                    Ok(kept)
                }
                Err(e) => {
                    tracing::warn!(account = %name, error = %e, "no Code Assist project for the account");
                    if let Some(s) = this.slots().get_mut(&id) {
                        s.running = None;
                        s.failed = Some((Instant::now(), bearer, e.clone()));
                    }
                    Err(e)
                }
            };
            tx.send_replace(Some(outcome));
        });
    }

    /// Keeps a project found for the account in its cell; ends its discovery.
    fn keep(&self, id: &Arc<str>, project: String) -> Arc<String> {
        let mut slots = self.slots();
        let slot = slots.entry(id.clone()).or_insert_with(|| Slot::new(None));
        slot.project.set(project.clone());
        slot.found = Some(project.clone());
        slot.running = None;
        slot.failed = None;
        slot.project.get().unwrap_or_else(|| Arc::new(project))
    }
}

/// The client metadata Gemini CLI sends to Code Assist's setup methods.
fn metadata() -> Value {
    json!({"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"})
}

/// A project as Code Assist names it: a string, or an object with its `id`.
fn project_of(v: &Value) -> Option<String> {
    let id = v.as_str().or_else(|| v["id"].as_str())?.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The tier to onboard an account on: the one Code Assist offers by default, else the first
/// offered, else the legacy tier (as Gemini CLI does).
fn onboard_tier(load: &Value) -> String {
    let tiers = load["allowedTiers"].as_array().map(Vec::as_slice).unwrap_or_default();
    tiers
        .iter()
        .find(|t| t["isDefault"] == json!(true))
        .or_else(|| tiers.first())
        .and_then(|t| t["id"].as_str())
        .unwrap_or("legacy-tier")
        .to_string()
}

/// Why an account has no project: Code Assist's reasons when it gave some.
fn no_project(load: &Value) -> String {
    let reasons: Vec<&str> = load["ineligibleTiers"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["reasonMessage"].as_str()).collect())
        .unwrap_or_default();
    let tier = load["currentTier"]["id"].as_str().unwrap_or("none");
    let mut m = format!(
        "Code Assist names no project for the account (tier {tier}); set the account's project_id to a Google Cloud project with the Gemini for Google Cloud API"
    );
    if !reasons.is_empty() {
        m.push_str(&format!(" ({})", reasons.join("; ")));
    }
    m
}

/// An operation name as Code Assist gives it (`operations/…`), safe to put in a path.
fn operation_path(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    ok.then(|| format!("/{CODE_ASSIST_VERSION}/{}", name.trim_start_matches('/')))
}

/// Finds the project of the account whose `Authorization` header is `bearer` (see the module
/// documentation).
async fn discover(
    client: &OAuthClient,
    settings: &GoogleOAuthSettings,
    base: &UpstreamBase,
    bearer: &HeaderValue,
    proxy: Option<&OutboundProxy>,
) -> Result<String, String> {
    let method = |m: &str| base.url(&format!("/{CODE_ASSIST_VERSION}:{m}"));
    let load = client
        .call_json(
            &method("loadCodeAssist"),
            bearer,
            Some(&json!({"metadata": metadata()})),
            proxy,
        )
        .await
        .map_err(|e| format!("loadCodeAssist {e}"))?;
    if let Some(p) = project_of(&load["cloudaicompanionProject"]) {
        return Ok(p);
    }
    if load["currentTier"].is_object() {
        return Err(no_project(&load));
    }
    let onboard = json!({"tierId": onboard_tier(&load), "metadata": metadata()});
    let poll = settings.onboard_poll.0.max(Duration::from_millis(100));
    let deadline = Instant::now() + settings.onboard_wait.0;
    let mut op = Value::Null;
    loop {
        op = match op["name"].as_str().and_then(operation_path) {
            Some(path) => client.call_json(&base.url(&path), bearer, None, proxy).await,
            // The first call, and a server that answers no operation to ask about.
            None => {
                client
                    .call_json(&method("onboardUser"), bearer, Some(&onboard), proxy)
                    .await
            }
        }
        .map_err(|e| format!("onboardUser {e}"))?;
        if op["done"] == json!(true) {
            if let Some(m) = op["error"]["message"].as_str() {
                return Err(format!("Code Assist could not onboard the account: {m}"));
            }
            return project_of(&op["response"]["cloudaicompanionProject"]).ok_or_else(|| no_project(&load));
        }
        if Instant::now() + poll > deadline {
            return Err(format!(
                "Code Assist did not finish onboarding the account within {:?}; a later request asks again",
                settings.onboard_wait.0
            ));
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_come_as_strings_or_objects() {
        assert_eq!(project_of(&json!("p-1")).as_deref(), Some("p-1"));
        assert_eq!(project_of(&json!({"id": "p-2", "name": "x"})).as_deref(), Some("p-2"));
        assert_eq!(project_of(&json!("")), None);
        assert_eq!(project_of(&Value::Null), None);
    }

    #[test]
    fn the_default_tier_is_onboarded_else_the_first() {
        let load = json!({"allowedTiers": [{"id": "standard-tier"}, {"id": "free-tier", "isDefault": true}]});
        assert_eq!(onboard_tier(&load), "free-tier");
        assert_eq!(
            onboard_tier(&json!({"allowedTiers": [{"id": "standard-tier"}]})),
            "standard-tier"
        );
        assert_eq!(onboard_tier(&json!({})), "legacy-tier");
    }

    #[test]
    fn operation_names_stay_in_their_path() {
        assert_eq!(
            operation_path("operations/abc-1_2").as_deref(),
            Some("/v1internal/operations/abc-1_2")
        );
        assert_eq!(operation_path("../x"), None);
        assert_eq!(operation_path("a?b"), None);
        assert_eq!(operation_path(""), None);
    }

    #[test]
    fn an_account_without_a_project_is_told_why() {
        let m = no_project(&json!({
            "currentTier": {"id": "standard-tier"},
            "ineligibleTiers": [{"reasonMessage": "Your account is not eligible"}]
        }));
        assert!(
            m.contains("standard-tier") && m.contains("project_id") && m.contains("not eligible"),
            "{m}"
        );
    }
}
