//! The OpenAI wires: Chat Completions and Responses on the OpenAI API or any OpenAI-compatible
//! server (`openai`), Azure OpenAI (`azure-openai`), and ChatGPT's Codex backend
//! (`openai-oauth`, Responses only).
//!
//! The request goes as the client sent it (after the model map), with the account's credential:
//! `Authorization: Bearer` for `openai` and `openai-oauth`, `api-key` for Azure. Headers that
//! name the client's own OpenAI organisation or project are not passed: the account's key decides
//! them. Codex's usage headers (`x-codex-primary-*`, `x-codex-secondary-*`) are kept with the
//! account like Anthropic's unified windows.

use http::{HeaderName, HeaderValue};

use super::{Call, Credential, Operation, PrepareError, Prepared, Provider, ProviderEnv, ResponseKind, Target, Wire};
use super::{anthropic::UnifiedLimits, request};

/// The OpenAI API: the default base URL of `openai` accounts.
pub const DEFAULT_API_BASE: &str = "https://api.openai.com/v1";
/// ChatGPT's Codex backend: the default base URL of `openai-oauth` accounts.
pub const DEFAULT_CODEX_BASE: &str = "https://chatgpt.com/backend-api/codex";

/// Client headers about the client's own OpenAI account, which the account's key replaces.
const CLIENT_ACCOUNT_HEADERS: [&str; 2] = ["openai-organization", "openai-project"];

impl Operation {
    /// The path of an OpenAI operation under an OpenAI base URL (which ends in `/v1`).
    pub fn openai_path(self) -> Option<&'static str> {
        match self {
            Operation::Chat => Some("/chat/completions"),
            Operation::Responses => Some("/responses"),
            Operation::ResponsesCompact => Some("/responses/compact"),
            _ => None,
        }
    }

    fn openai_response(self) -> ResponseKind {
        match self {
            Operation::Chat => ResponseKind::OpenAiChat,
            _ => ResponseKind::OpenAiResponses,
        }
    }
}

/// The provider of `openai` accounts.
pub struct OpenAi;

impl Provider for OpenAi {
    fn wire(&self) -> Wire {
        Wire::OpenAi
    }

    fn prepare(&self, _env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        let Some(path) = call.op.openai_path() else {
            return Err(PrepareError::Request("this account serves OpenAI requests only".into()));
        };
        let Credential::Header(name, value) = target.credential else {
            return Err(PrepareError::Account("the account has no API key".into()));
        };
        let path = target.base.path_and_query(path, call.query);
        let head = head(call, &path, target, (name.clone(), value.clone()), call.body.len())?;
        Ok(Prepared {
            head,
            body: call.body.clone(),
            response: call.op.openai_response(),
            wire_model: None,
        })
    }

    fn observe(&self, headers: &http::HeaderMap, now_s: i64) -> Option<UnifiedLimits> {
        codex_limits(headers, now_s)
    }
}

/// How an Azure OpenAI account is addressed: its deployments and API version.
#[derive(Debug, Clone, Default)]
pub struct AzureTarget {
    /// Model name (after the model map) → deployment name.
    pub deployments: std::collections::HashMap<String, String>,
    /// The `api-version` query of the deployment paths; `None` for the v1 API.
    pub api_version: Option<String>,
}

impl AzureTarget {
    /// The deployment that serves `model`: its entry, else a deployment named like the model.
    pub fn deployment<'a>(&'a self, model: &'a str) -> &'a str {
        self.deployments.get(model).map_or(model, String::as_str)
    }

    /// Whether `api_version` selects the v1 API (no version query, model in the body).
    fn v1(&self) -> bool {
        self.api_version
            .as_deref()
            .is_none_or(|v| v.eq_ignore_ascii_case("v1") || v.eq_ignore_ascii_case("preview"))
    }
}

/// The provider of `azure-openai` accounts. On the v1 API (no `api_version`, or `v1`): the OpenAI
/// paths under `/openai/v1` (`/openai/v1/chat/completions`, `/openai/v1/responses`) with the
/// deployment named in the body. With a dated `api_version`: Chat Completions on
/// `/openai/deployments/{deployment}/chat/completions?api-version=…`, Responses on
/// `/openai/responses?api-version=…` with the deployment in the body.
pub struct Azure;

impl Provider for Azure {
    fn wire(&self) -> Wire {
        Wire::OpenAi
    }

    fn prepare(&self, _env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        let (Credential::Azure(azure, name, value), Some(_)) = (target.credential, call.op.openai_path()) else {
            return Err(PrepareError::Account(
                "the account is not an Azure OpenAI account".into(),
            ));
        };
        let deployment = azure.deployment(call.upstream_model);
        // The deployment named in the body, as the v1 API and the Responses paths want it.
        let deployment_in_body = || {
            if deployment == call.upstream_model {
                call.body.clone()
            } else {
                crate::wire::json::replace_model(call.body, deployment)
            }
        };
        let tail = call.op.openai_path().unwrap_or("/responses");
        let (path, body) = match (call.op, azure.api_version.as_deref().filter(|_| !azure.v1())) {
            // The v1 API: the OpenAI paths under `/openai/v1`, no version.
            (_, None) => (
                target.base.path_and_query(&format!("/openai/v1{tail}"), call.query),
                deployment_in_body(),
            ),
            (Operation::Chat, Some(version)) => {
                let enc = super::encode_component(deployment);
                let path = format!("/openai/deployments/{enc}/chat/completions");
                let query = join_query(&format!("api-version={}", super::encode_component(version)), call.query);
                (target.base.path_and_query(&path, Some(&query)), call.body.clone())
            }
            (_, Some(version)) => {
                let query = join_query(&format!("api-version={}", super::encode_component(version)), call.query);
                (
                    target.base.path_and_query(&format!("/openai{tail}"), Some(&query)),
                    deployment_in_body(),
                )
            }
        };
        let head = head(call, &path, target, (name.clone(), value.clone()), body.len())?;
        Ok(Prepared {
            head,
            body,
            response: call.op.openai_response(),
            wire_model: None,
        })
    }
}

/// The provider of `openai-oauth` accounts: a ChatGPT subscription on the Codex backend
/// (`{codex_base}/responses`), Responses only, with the token and the ChatGPT account id header
/// the backend needs.
pub struct CodexOAuth;

impl Provider for CodexOAuth {
    fn wire(&self) -> Wire {
        Wire::CodexResponses
    }

    fn prepare(&self, _env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        let path = match call.op {
            Operation::Responses | Operation::ResponsesCompact => call.op.openai_path().unwrap_or("/responses"),
            _ => {
                return Err(PrepareError::Request(
                    "this account serves Responses requests only".into(),
                ));
            }
        };
        let (Some(live), Credential::OpenAiOAuth(_, account_id)) = (target.live, target.credential) else {
            return Err(PrepareError::Account("the account has no usable ChatGPT token".into()));
        };
        let path = target.base.path_and_query(path, call.query);
        let mut head = head(
            call,
            &path,
            target,
            (http::header::AUTHORIZATION, live.clone()),
            call.body.len(),
        )?;
        if let Some(id) = account_id {
            head.insert_header(HeaderName::from_static("chatgpt-account-id"), id.clone())?;
        }
        Ok(Prepared {
            head,
            body: call.body.clone(),
            response: ResponseKind::OpenAiResponses,
            wire_model: None,
        })
    }

    fn observe(&self, headers: &http::HeaderMap, now_s: i64) -> Option<UnifiedLimits> {
        codex_limits(headers, now_s)
    }
}

fn head(
    call: &Call<'_>,
    path: &str,
    target: &Target<'_>,
    auth: (HeaderName, HeaderValue),
    len: usize,
) -> Result<pingora::http::RequestHeader, PrepareError> {
    let mut head = request::upstream_request(call.client, path, &target.base.host_header, Some(&auth), len)?;
    for h in CLIENT_ACCOUNT_HEADERS {
        head.remove_header(h);
    }
    // A converted request's client may have sent no content type.
    head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    Ok(head)
}

fn join_query(first: &str, rest: Option<&str>) -> String {
    match rest {
        Some(q) if !q.is_empty() => format!("{first}&{q}"),
        _ => first.to_string(),
    }
}

/// The credential header of an `openai` account.
pub fn bearer(api_key: &str) -> Result<(HeaderName, HeaderValue), String> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", api_key.trim()))
        .map_err(|_| "the API key contains characters not allowed in a header".to_string())?;
    v.set_sensitive(true);
    Ok((http::header::AUTHORIZATION, v))
}

/// The credential header of an `azure-openai` account.
pub fn azure_key(api_key: &str) -> Result<(HeaderName, HeaderValue), String> {
    let mut v = HeaderValue::from_str(api_key.trim())
        .map_err(|_| "the API key contains characters not allowed in a header".to_string())?;
    v.set_sensitive(true);
    Ok((HeaderName::from_static("api-key"), v))
}

/// The `chatgpt-account-id` header value of an `openai-oauth` account.
pub fn chatgpt_account_header(account_id: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(account_id.trim())
        .map_err(|_| "the ChatGPT account id contains characters not allowed in a header".to_string())
}

/// Codex's usage windows: `x-codex-primary-*` (the short window) as the five-hour window and
/// `x-codex-secondary-*` (the weekly one) as the seven-day window, utilisation as a fraction.
pub fn codex_limits(h: &http::HeaderMap, now_s: i64) -> Option<UnifiedLimits> {
    let num = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
    };
    let window = |which: &str| {
        let used = num(&format!("x-codex-{which}-used-percent")).map(|p| p / 100.0);
        let reset = num(&format!("x-codex-{which}-reset-at"))
            .map(|r| r as i64)
            .or_else(|| num(&format!("x-codex-{which}-reset-after-seconds")).map(|s| now_s + s as i64));
        (used, reset)
    };
    let (p_used, p_reset) = window("primary");
    let (s_used, s_reset) = window("secondary");
    if p_used.is_none() && s_used.is_none() {
        return None;
    }
    let exhausted = p_used.is_some_and(|u| u >= 1.0) || s_used.is_some_and(|u| u >= 1.0);
    let reset = match (p_used.is_some_and(|u| u >= 1.0), s_used.is_some_and(|u| u >= 1.0)) {
        (_, true) => s_reset,
        (true, false) => p_reset,
        _ => None,
    };
    Some(UnifiedLimits {
        status: Some(if exhausted { "rejected" } else { "allowed" }.to_string()),
        reset,
        representative_claim: None,
        five_hour_utilization: p_used,
        five_hour_reset: p_reset,
        seven_day_utilization: s_used,
        seven_day_reset: s_reset,
        seen_at: now_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codex_windows_read_as_unified_limits() {
        let mut h = http::HeaderMap::new();
        assert!(codex_limits(&h, 100).is_none());
        h.insert("x-codex-primary-used-percent", HeaderValue::from_static("42.5"));
        h.insert("x-codex-primary-reset-after-seconds", HeaderValue::from_static("600"));
        h.insert("x-codex-secondary-used-percent", HeaderValue::from_static("100"));
        h.insert(
            "x-codex-secondary-reset-after-seconds",
            HeaderValue::from_static("86400"),
        );
        let u = codex_limits(&h, 100).unwrap();
        assert_eq!(u.five_hour_utilization, Some(0.425));
        assert_eq!(u.five_hour_reset, Some(700));
        assert_eq!(u.seven_day_reset, Some(86500));
        assert_eq!(u.exhausted_until(100), Some(86500));
    }

    /// The path and body model an Azure account with `api_version` sends `op` to.
    fn azure_call(api_version: Option<&str>, op: Operation) -> (String, serde_json::Value) {
        let mut azure = AzureTarget {
            api_version: api_version.map(String::from),
            ..AzureTarget::default()
        };
        azure.deployments.insert("gpt-5".into(), "gpt5-prod".into());
        let (name, value) = azure_key("k").unwrap();
        let credential = Credential::Azure(std::sync::Arc::new(azure), name, value);
        let base = super::super::UpstreamBase::parse("https://r.openai.azure.com").unwrap();
        let client = pingora::http::RequestHeader::build("POST", b"/v1/x", None).unwrap();
        let body = bytes::Bytes::from_static(br#"{"model":"gpt-5","input":"hi"}"#);
        let call = Call {
            op,
            client: &client,
            query: None,
            body: &body,
            upstream_model: "gpt-5",
            stream: false,
        };
        let target = Target {
            base: &base,
            credential: &credential,
            live: None,
            project: None,
        };
        let env = ProviderEnv {
            oauth_beta: String::new(),
            bedrock_models: super::super::bedrock::models::Catalog::from_names(std::iter::empty()),
        };
        let p = Azure.prepare(&env, &call, &target).unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        (p.head.uri.to_string(), sent["model"].clone())
    }

    #[test]
    fn azure_addresses_the_v1_api_and_dated_versions() {
        for v1 in [None, Some("v1"), Some("preview")] {
            assert_eq!(
                azure_call(v1, Operation::Chat),
                ("/openai/v1/chat/completions".into(), "gpt5-prod".into()),
                "{v1:?}"
            );
            assert_eq!(
                azure_call(v1, Operation::Responses),
                ("/openai/v1/responses".into(), "gpt5-prod".into())
            );
        }
        let dated = Some("2025-04-01-preview");
        assert_eq!(
            azure_call(dated, Operation::Chat),
            (
                "/openai/deployments/gpt5-prod/chat/completions?api-version=2025-04-01-preview".into(),
                "gpt-5".into()
            )
        );
        assert_eq!(
            azure_call(dated, Operation::Responses),
            (
                "/openai/responses?api-version=2025-04-01-preview".into(),
                "gpt5-prod".into()
            )
        );
    }

    #[test]
    fn azure_picks_deployments_and_api() {
        let mut t = AzureTarget::default();
        t.deployments.insert("gpt-5".into(), "gpt5-prod".into());
        assert_eq!(t.deployment("gpt-5"), "gpt5-prod");
        assert_eq!(t.deployment("gpt-4.1"), "gpt-4.1");
        assert!(t.v1());
        t.api_version = Some("2025-04-01-preview".into());
        assert!(!t.v1());
    }
}
