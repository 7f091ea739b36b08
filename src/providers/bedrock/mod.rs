//! `bedrock` accounts: Claude on AWS Bedrock, one region per account.
//!
//! Clients keep speaking the Anthropic Messages API. Each attempt becomes
//! `POST /model/{id}/invoke` (or `/invoke-with-response-stream`, or `/count-tokens`) on
//! `https://bedrock-runtime.{region}.amazonaws.com` (or the account's `base_url`), with the model
//! id percent-encoded in the path, the body of [`body::invoke_body`], and a SigV4 signature
//! (service `bedrock`) computed last, on every attempt, by the `aws-sigv4` crate; or
//! `Authorization: Bearer` for a Bedrock API key. The answer is read by `convert`: the AWS
//! event-stream becomes Anthropic SSE, AWS errors become Anthropic errors.

pub mod body;
pub mod models;

use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderValue;

use super::{
    Call, Credential, Operation, PrepareError, Prepared, Provider, ProviderEnv, ResponseKind, Target, Wire, request,
};
use models::Profile;

/// The signing name of Bedrock's runtime API (not `bedrock-runtime`).
pub const SIGNING_NAME: &str = "bedrock";

/// The credential of a Bedrock account.
pub struct BedrockAuth {
    pub region: String,
    pub profile: Profile,
    pub method: AuthMethod,
}

pub enum AuthMethod {
    /// Access key, secret and optional session token: SigV4.
    SigV4(aws_credential_types::Credentials),
    /// A Bedrock API key: `Authorization: Bearer`.
    ApiKey(HeaderValue),
}

impl std::fmt::Debug for BedrockAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let method = match &self.method {
            AuthMethod::SigV4(_) => "sigv4",
            AuthMethod::ApiKey(_) => "api-key",
        };
        f.debug_struct("BedrockAuth")
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("method", &method)
            .finish()
    }
}

/// What a Bedrock account's sealed secret holds.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BedrockSecret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl std::fmt::Debug for BedrockSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BedrockSecret")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl BedrockSecret {
    pub fn to_secret(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(secret: &str) -> Result<BedrockSecret, String> {
        serde_json::from_str(secret).map_err(|_| "the sealed Bedrock credential is not readable".to_string())
    }

    /// Checks that exactly one way of authenticating is complete.
    pub fn validate(&self) -> Result<(), String> {
        let filled = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let keys = filled(&self.access_key_id) || filled(&self.secret_access_key);
        match (keys, filled(&self.api_key)) {
            (true, true) => Err("give either access_key_id/secret_access_key or api_key, not both".into()),
            (false, false) => {
                Err("needs access_key_id and secret_access_key (SigV4), or api_key (a Bedrock API key)".into())
            }
            (true, false) if !(filled(&self.access_key_id) && filled(&self.secret_access_key)) => {
                Err("access_key_id and secret_access_key go together".into())
            }
            (false, true) if filled(&self.session_token) => {
                Err("session_token goes with access keys, not api_key".into())
            }
            _ => {
                for (name, v) in [
                    ("access_key_id", &self.access_key_id),
                    ("secret_access_key", &self.secret_access_key),
                    ("session_token", &self.session_token),
                    ("api_key", &self.api_key),
                ] {
                    if let Some(v) = v
                        && (v.trim() != v || v.bytes().any(|b| !b.is_ascii_graphic()))
                    {
                        return Err(format!("{name} must be printable ASCII without spaces"));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Checks a region name (`us-east-1`).
pub fn valid_region(region: &str) -> Result<(), String> {
    let ok = !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && region.contains('-');
    if ok {
        Ok(())
    } else {
        Err(format!("`{region}` is not an AWS region like us-east-1"))
    }
}

/// The default endpoint of a region.
pub fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

impl BedrockAuth {
    /// Opens a secret for the hot path.
    pub fn new(region: &str, profile: Option<Profile>, secret: &BedrockSecret) -> Result<BedrockAuth, String> {
        valid_region(region)?;
        secret.validate()?;
        let method = match (&secret.api_key, &secret.access_key_id, &secret.secret_access_key) {
            (Some(k), _, _) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", k.trim()))
                    .map_err(|_| "api_key contains characters not allowed in a header".to_string())?;
                v.set_sensitive(true);
                AuthMethod::ApiKey(v)
            }
            (None, Some(id), Some(secret_key)) => AuthMethod::SigV4(aws_credential_types::Credentials::new(
                id.trim(),
                secret_key.trim(),
                secret.session_token.clone().filter(|t| !t.trim().is_empty()),
                None,
                "claude-relay",
            )),
            _ => return Err("incomplete Bedrock credential".into()),
        };
        Ok(BedrockAuth {
            region: region.to_string(),
            profile: profile.unwrap_or_else(|| Profile::default_for_region(region)),
            method,
        })
    }
}

/// The provider of `bedrock` accounts.
pub struct Bedrock;

impl Provider for Bedrock {
    fn wire(&self) -> Wire {
        Wire::Bedrock
    }

    fn prepare(&self, env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        let Credential::Bedrock(auth) = target.credential else {
            return Err(PrepareError::Account("the account has no Bedrock credential".into()));
        };
        let model_id = env.bedrock_models.resolve(call.upstream_model, &auth.profile);
        let (action, response) = match (call.op, call.stream) {
            (Operation::CountTokens, _) => ("count-tokens", ResponseKind::BedrockCountTokens),
            (Operation::Messages, true) => ("invoke-with-response-stream", ResponseKind::BedrockStream),
            (Operation::Messages, false) => ("invoke", ResponseKind::BedrockInvoke),
            _ => {
                return Err(PrepareError::Request(
                    "this account serves Anthropic Messages requests only".into(),
                ));
            }
        };
        // Flags that name the client itself stay in the header, as Claude Code's own Bedrock
        // mode sends them; the others go into the body, where Bedrock reads them.
        let (header_flags, body_flags): (Vec<String>, Vec<String>) = body::header_betas(&call.client.headers)
            .into_iter()
            .partition(|f| f.starts_with("claude-code-"));
        let invoke = body::invoke_body(call.body, &body_flags, (call.op == Operation::CountTokens).then_some(1))
            .map_err(PrepareError::Request)?;
        let body = match call.op {
            Operation::CountTokens => body::count_tokens_body(&invoke),
            _ => Bytes::from(invoke),
        };
        // Bedrock has no query parameters here; the client's (e.g. `beta=true`) stay behind.
        let path = format!(
            "{}/model/{}/{}",
            target.base.path_prefix,
            encode_segment(&model_id),
            action
        );
        let mut head = request::upstream_request(call.client, &path, &target.base.host_header, None, body.len())?;
        head.remove_header("anthropic-beta");
        if !header_flags.is_empty() {
            head.insert_header("anthropic-beta", header_flags.join(","))?;
        }
        for h in [
            "x-amz-date",
            "x-amz-security-token",
            "x-amz-content-sha256",
            "accept",
            "x-amzn-bedrock-accept",
        ] {
            head.remove_header(h);
        }
        head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        let accept_header = match response {
            ResponseKind::BedrockStream => "x-amzn-bedrock-accept",
            _ => "accept",
        };
        head.insert_header(accept_header, "application/json")?;
        match &auth.method {
            AuthMethod::ApiKey(v) => {
                head.insert_header(http::header::AUTHORIZATION, v.clone())?;
            }
            AuthMethod::SigV4(creds) => {
                let signed = sign(
                    creds,
                    &auth.region,
                    target,
                    &path,
                    &[
                        ("content-type", "application/json"),
                        (accept_header, "application/json"),
                    ],
                    &body,
                    SystemTime::now(),
                )?;
                for (name, value) in signed {
                    let mut v = HeaderValue::from_str(&value)
                        .map_err(|_| PrepareError::Account("the signature is not a valid header".into()))?;
                    if name == "authorization" || name == "x-amz-security-token" {
                        v.set_sensitive(true);
                    }
                    head.insert_header(name, v)?;
                }
            }
        }
        Ok(Prepared {
            head,
            body,
            response,
            wire_model: Some(model_id),
        })
    }

    fn effective_status(&self, status: u16, headers: &http::HeaderMap) -> u16 {
        if status < 400 {
            return status;
        }
        error_type(headers).and_then(status_of_error).unwrap_or(status)
    }

    fn stream_failure(&self, kind: &str) -> Option<u16> {
        match kind {
            "throttlingException" | "serviceQuotaExceededException" => Some(429),
            "serviceUnavailableException" => Some(503),
            "internalServerException" => Some(500),
            // The model's or the request's trouble, not the account's.
            _ => None,
        }
    }
}

/// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for a request.
#[allow(clippy::too_many_arguments)]
fn sign(
    creds: &aws_credential_types::Credentials,
    region: &str,
    target: &Target<'_>,
    path: &str,
    signed: &[(&str, &str)],
    body: &[u8],
    at: SystemTime,
) -> Result<Vec<(String, String)>, PrepareError> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity: aws_smithy_runtime_api::client::identity::Identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| PrepareError::Account(format!("SigV4 parameters: {e}")))?
        .into();
    let host = target.base.host_header.to_str().unwrap_or_default();
    let scheme = if target.base.tls { "https" } else { "http" };
    let uri = format!("{scheme}://{host}{path}");
    let headers = std::iter::once(("host", host)).chain(signed.iter().copied());
    let request = SignableRequest::new("POST", uri, headers, SignableBody::Bytes(body))
        .map_err(|e| PrepareError::Account(format!("SigV4 request: {e}")))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| PrepareError::Account(format!("SigV4 signing failed: {e}")))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect())
}

/// A path segment percent-encoded as AWS SDKs do: everything but unreserved characters
/// (`us.anthropic.claude-sonnet-4-5-20250929-v1:0` → `…-v1%3A0`).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The AWS error type of an answer: `x-amzn-ErrorType: ThrottlingException:http://…`.
pub fn error_type(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get("x-amzn-errortype")?.to_str().ok()?;
    let t = v.split(':').next()?.trim();
    (!t.is_empty()).then_some(t)
}

/// The status an AWS error type stands for, where it says more than the HTTP status.
pub fn status_of_error(kind: &str) -> Option<u16> {
    Some(match kind {
        "ThrottlingException" | "ServiceQuotaExceededException" | "TooManyRequestsException" => 429,
        "ServiceUnavailableException" | "ModelNotReadyException" => 503,
        "InternalServerException" => 500,
        "AccessDeniedException" => 403,
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException" => 401,
        "ValidationException" => 400,
        "ResourceNotFoundException" => 404,
        "ModelTimeoutException" => 504,
        _ => return None,
    })
}

/// The Anthropic error type for a status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// An AWS error answer (`{"message": …}` or `{"Message": …}`) as an Anthropic error body.
pub fn anthropic_error_body(status: u16, headers: &http::HeaderMap, body: &[u8]) -> Bytes {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(|m| m.as_str())
        .map(String::from)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned());
    let message = match error_type(headers) {
        Some(t) => format!("{message} (Bedrock {t})"),
        None => message,
    };
    let out = serde_json::json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}});
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_encoded_like_the_sdks() {
        assert_eq!(
            encode_segment("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
        );
        assert_eq!(encode_segment("arn:aws:x/y"), "arn%3Aaws%3Ax%2Fy");
    }

    #[test]
    fn error_types_classify() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-amzn-ErrorType",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
                .parse()
                .unwrap(),
        );
        assert_eq!(Bedrock.effective_status(400, &h), 429);
        assert_eq!(Bedrock.effective_status(200, &h), 200);
        let body = anthropic_error_body(429, &h, br#"{"message":"Too many requests"}"#);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "Too many requests (Bedrock ThrottlingException)");
        assert_eq!(Bedrock.effective_status(500, &http::HeaderMap::new()), 500);
        assert_eq!(Bedrock.stream_failure("throttlingException"), Some(429));
        assert_eq!(Bedrock.stream_failure("validationException"), None);
    }

    #[test]
    fn secrets_need_one_complete_method() {
        let s = |a: Option<&str>, b: Option<&str>, t: Option<&str>, k: Option<&str>| BedrockSecret {
            access_key_id: a.map(String::from),
            secret_access_key: b.map(String::from),
            session_token: t.map(String::from),
            api_key: k.map(String::from),
        };
        assert!(s(Some("AKID"), Some("sk"), None, None).validate().is_ok());
        assert!(s(Some("AKID"), Some("sk"), Some("tok"), None).validate().is_ok());
        assert!(s(None, None, None, Some("key")).validate().is_ok());
        assert!(s(Some("AKID"), None, None, None).validate().is_err());
        assert!(s(Some("AKID"), Some("sk"), None, Some("key")).validate().is_err());
        assert!(s(None, None, None, None).validate().is_err());
        assert!(s(None, None, Some("t"), Some("key")).validate().is_err());
        assert!(s(Some("AK ID"), Some("sk"), None, None).validate().is_err());
        let dbg = format!("{:?}", s(Some("AKID"), Some("topsecret"), Some("tok"), None));
        assert!(!dbg.contains("topsecret") && !dbg.contains("tok\""));
        assert!(valid_region("us-east-1").is_ok());
        assert!(valid_region("US_EAST").is_err());
    }
}
