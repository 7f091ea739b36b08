//! The Gemini dialects: the Gemini API (`generateContent`, the google-genai SDKs and Gemini CLI
//! with an API key) and Code Assist (`v1internal`, Gemini CLI's "Login with Google" mode pointed at
//! the relay with `CODE_ASSIST_ENDPOINT`).
//!
//! Mount points: `/gemini` (the prefix clients of the system the relay replaces configure) and
//! the root. Paths:
//! - `POST /{v1beta,v1}/models/{model}:generateContent | :streamGenerateContent | :countTokens`;
//!   `GET /{v1beta,v1}/models` and `/{v1beta,v1}/models/{model}` (under `/gemini`; at the root,
//!   `/v1/models` and `/v1/models/{id}` belong to the Anthropic and OpenAI surfaces);
//! - `POST /v1internal:{generateContent, streamGenerateContent, countTokens}`, relayed;
//! - the Code Assist calls about the user and its project (`loadCodeAssist`, `onboardUser`,
//!   `retrieveUserQuota`, `listExperiments`, `recordCodeAssistMetrics`, `fetchAdminControls`,
//!   `getCodeAssistGlobalUserSetting`, `setCodeAssistGlobalUserSetting`, operations), answered by
//!   the relay itself: the client talks to the relay's Code Assist, whichever account serves it.
//!   The same setup calls with a model prefix (`/v1beta/models/{m}:loadCodeAssist`) too.

use bytes::Bytes;
use filters::Service;

use super::{Dialect, Endpoint, ErrorKind, Ingress, Scope, get_only, json_bytes, post_only};

/// The Code Assist calls the relay answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    LoadCodeAssist,
    OnboardUser,
    RetrieveUserQuota,
    ListExperiments,
    RecordMetrics,
    FetchAdminControls,
    GetUserSetting,
    SetUserSetting,
    /// `GET /v1internal/operations/{id}`: the onboarding operation, done.
    GetOperation,
}

pub struct Gemini;

impl Ingress for Gemini {
    fn dialect(&self) -> Dialect {
        Dialect::Gemini
    }

    fn service(&self) -> Service {
        Service::Gemini
    }

    fn route(&self, method: &http::Method, path: &str) -> Option<Endpoint> {
        let (mounted, rest) = match path.strip_prefix("/gemini") {
            Some(r) if r.is_empty() || r.starts_with('/') => (true, r),
            _ => (false, path),
        };
        if let Some(call) = rest.strip_prefix("/v1internal:") {
            return Some(match code_assist_method(call) {
                Some(Ok(e)) => post_only(method, e),
                Some(Err(Setup::GetUserSetting)) => get_only(method, Endpoint::CodeAssistSetup(Setup::GetUserSetting)),
                Some(Err(setup)) => post_only(method, Endpoint::CodeAssistSetup(setup)),
                None => Endpoint::NotFound,
            });
        }
        if rest.starts_with("/v1internal/operations/") {
            return Some(get_only(method, Endpoint::CodeAssistSetup(Setup::GetOperation)));
        }
        let (version, models) = if let Some(m) = rest.strip_prefix("/v1beta/models") {
            ("v1beta", m)
        } else if let Some(m) = rest.strip_prefix("/v1/models") {
            ("v1", m)
        } else {
            return mounted.then_some(Endpoint::NotFound);
        };
        if models.is_empty() {
            // At the root, `/v1/models` is the Anthropic surface's (matched before this one).
            return Some(get_only(method, Endpoint::Models(Scope::Any)));
        }
        let model_and_call = models.strip_prefix('/')?;
        match model_and_call.rsplit_once(':') {
            Some((model, call)) if !model.is_empty() && !model.contains('/') => Some(match call {
                "generateContent" => post_only(method, Endpoint::GeminiGenerate { stream: false }),
                "streamGenerateContent" => post_only(method, Endpoint::GeminiGenerate { stream: true }),
                "countTokens" => post_only(method, Endpoint::GeminiCountTokens),
                other => match code_assist_method(other) {
                    Some(Err(setup)) if setup != Setup::GetUserSetting => {
                        post_only(method, Endpoint::CodeAssistSetup(setup))
                    }
                    _ => Endpoint::NotFound,
                },
            }),
            // `GET /v1beta/models/{model}`; at the root, `/v1/models/{id}` is the OpenAI one.
            None if !model_and_call.is_empty() && !model_and_call.contains('/') && (mounted || version == "v1beta") => {
                Some(get_only(method, Endpoint::ModelInfo(Scope::Any)))
            }
            _ => mounted.then_some(Endpoint::NotFound),
        }
    }

    fn error_body(&self, kind: ErrorKind, status: u16, message: &str) -> Bytes {
        super::gemini_error(kind, status, message)
    }

    /// Google's streams end a failure with one last event holding the error.
    fn stream_error(&self, kind: ErrorKind, message: &str) -> Bytes {
        let status = match kind {
            ErrorKind::Upstream | ErrorKind::Unavailable => 503,
            ErrorKind::RateLimited => 429,
            _ => 500,
        };
        let body = super::gemini_error(kind, status, message);
        let mut out = Vec::with_capacity(body.len() + 8);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    fn models_list(&self, ids: &[String]) -> Bytes {
        let models: Vec<serde_json::Value> = ids.iter().map(|id| model_object(id)).collect();
        json_bytes(&serde_json::json!({ "models": models }))
    }

    fn model_info(&self, id: &str) -> Bytes {
        json_bytes(&model_object(id))
    }
}

/// A `v1internal` method: relayed (`Ok`) or answered by the relay (`Err`).
fn code_assist_method(call: &str) -> Option<Result<Endpoint, Setup>> {
    Some(match call {
        "generateContent" => Ok(Endpoint::CodeAssistGenerate { stream: false }),
        "streamGenerateContent" => Ok(Endpoint::CodeAssistGenerate { stream: true }),
        "countTokens" => Ok(Endpoint::CodeAssistCountTokens),
        "loadCodeAssist" => Err(Setup::LoadCodeAssist),
        "onboardUser" => Err(Setup::OnboardUser),
        "retrieveUserQuota" => Err(Setup::RetrieveUserQuota),
        "listExperiments" => Err(Setup::ListExperiments),
        "recordCodeAssistMetrics" => Err(Setup::RecordMetrics),
        "fetchAdminControls" => Err(Setup::FetchAdminControls),
        "getCodeAssistGlobalUserSetting" => Err(Setup::GetUserSetting),
        "setCodeAssistGlobalUserSetting" => Err(Setup::SetUserSetting),
        _ => return None,
    })
}

/// One model in the Gemini API's shape.
fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({
        "name": format!("models/{id}"),
        "baseModelId": id,
        "version": "001",
        "displayName": id,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    })
}

/// The model a Gemini API path names (`/v1beta/models/{model}:generateContent`), percent-decoded.
pub fn path_model(path: &str) -> Option<String> {
    let (_, tail) = path.rsplit_once("/models/")?;
    let (model, _) = tail.rsplit_once(':')?;
    let decoded = super::percent_decode(model);
    (!decoded.is_empty()).then_some(decoded)
}

/// The relay's answer to a Code Assist setup call. `project` is the project the client named, if
/// any: it is handed back, so a client that chose one keeps it (the relay replaces it with each
/// account's own when it relays a request).
pub fn setup_answer(setup: Setup, project: Option<&str>) -> Bytes {
    let project = project.filter(|p| !p.is_empty()).unwrap_or(RELAY_PROJECT);
    let tier = serde_json::json!({
        "id": "standard-tier",
        "name": "Gemini Code Assist (relayed)",
        "description": "Requests are served by the relay's Gemini accounts.",
        "userDefinedCloudaicompanionProject": true,
        "hasOnboardedPreviously": true,
    });
    let v = match setup {
        Setup::LoadCodeAssist => {
            let mut default = tier.clone();
            default["isDefault"] = serde_json::Value::Bool(true);
            serde_json::json!({
                "currentTier": tier,
                "allowedTiers": [default],
                "cloudaicompanionProject": project,
            })
        }
        Setup::OnboardUser | Setup::GetOperation => serde_json::json!({
            "name": "operations/relay-onboarding",
            "done": true,
            "response": {
                "@type": "type.googleapis.com/google.internal.cloud.code.v1internal.OnboardUserResponse",
                "cloudaicompanionProject": { "id": project, "name": project },
            },
        }),
        Setup::RetrieveUserQuota => serde_json::json!({ "buckets": [] }),
        Setup::ListExperiments => serde_json::json!({ "experimentIds": [], "flags": [] }),
        Setup::RecordMetrics | Setup::FetchAdminControls | Setup::GetUserSetting | Setup::SetUserSetting => {
            serde_json::json!({})
        }
    };
    json_bytes(&v)
}

/// The project the relay names to Code Assist clients that chose none.
pub const RELAY_PROJECT: &str = "claude-relay";

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes_both_dialects_under_gemini_and_the_root() {
        let r = |m: &Method, p: &str| Gemini.route(m, p);
        for p in ["/gemini", ""] {
            for v in ["v1beta", "v1"] {
                assert_eq!(
                    r(
                        &Method::POST,
                        &format!("{p}/{v}/models/gemini-2.5-pro:streamGenerateContent")
                    ),
                    Some(Endpoint::GeminiGenerate { stream: true }),
                    "{p} {v}"
                );
                assert_eq!(
                    r(&Method::POST, &format!("{p}/{v}/models/gemini-2.5-pro:generateContent")),
                    Some(Endpoint::GeminiGenerate { stream: false })
                );
                assert_eq!(
                    r(&Method::POST, &format!("{p}/{v}/models/gemini-2.5-pro:countTokens")),
                    Some(Endpoint::GeminiCountTokens)
                );
            }
            assert_eq!(
                r(&Method::POST, &format!("{p}/v1internal:streamGenerateContent")),
                Some(Endpoint::CodeAssistGenerate { stream: true })
            );
            assert_eq!(
                r(&Method::POST, &format!("{p}/v1internal:loadCodeAssist")),
                Some(Endpoint::CodeAssistSetup(Setup::LoadCodeAssist))
            );
            assert_eq!(
                r(&Method::GET, &format!("{p}/v1internal:getCodeAssistGlobalUserSetting")),
                Some(Endpoint::CodeAssistSetup(Setup::GetUserSetting))
            );
            assert_eq!(
                r(&Method::POST, &format!("{p}/v1beta/models/gemini-2.5-pro:onboardUser")),
                Some(Endpoint::CodeAssistSetup(Setup::OnboardUser))
            );
            assert_eq!(
                r(&Method::GET, &format!("{p}/v1beta/models")),
                Some(Endpoint::Models(Scope::Any))
            );
            assert_eq!(
                r(&Method::GET, &format!("{p}/v1beta/models/gemini-2.5-pro")),
                Some(Endpoint::ModelInfo(Scope::Any))
            );
            assert_eq!(
                r(&Method::GET, &format!("{p}/v1internal:generateContent")),
                Some(Endpoint::MethodNotAllowed("POST"))
            );
            assert_eq!(
                r(&Method::POST, &format!("{p}/v1internal:nope")),
                Some(Endpoint::NotFound)
            );
        }
        assert_eq!(r(&Method::GET, "/gemini/v1/models"), Some(Endpoint::Models(Scope::Any)));
        assert_eq!(
            r(&Method::GET, "/gemini/v1/models/x"),
            Some(Endpoint::ModelInfo(Scope::Any))
        );
        assert_eq!(r(&Method::GET, "/v1/models/x"), None);
        assert_eq!(r(&Method::POST, "/gemini/v2/other"), Some(Endpoint::NotFound));
        assert_eq!(r(&Method::POST, "/v1/messages"), None);
        assert_eq!(r(&Method::POST, "/geminix/v1beta/models/a:generateContent"), None);
    }

    #[test]
    fn reads_the_model_from_the_path() {
        assert_eq!(
            path_model("/gemini/v1beta/models/gemini-2.5-pro:generateContent").as_deref(),
            Some("gemini-2.5-pro")
        );
        assert_eq!(path_model("/v1/models/a%2Db:countTokens").as_deref(), Some("a-b"));
        assert_eq!(path_model("/v1/models/:countTokens"), None);
    }

    #[test]
    fn setup_answers_keep_gemini_cli_on_the_relay() {
        let v: serde_json::Value = serde_json::from_slice(&setup_answer(Setup::LoadCodeAssist, None)).unwrap();
        assert_eq!(v["cloudaicompanionProject"], RELAY_PROJECT);
        assert_eq!(v["currentTier"]["id"], "standard-tier");
        assert_eq!(v["allowedTiers"][0]["isDefault"], true);
        let v: serde_json::Value = serde_json::from_slice(&setup_answer(Setup::OnboardUser, Some("mine"))).unwrap();
        assert_eq!(v["done"], true);
        assert_eq!(v["response"]["cloudaicompanionProject"]["id"], "mine");
    }
}
