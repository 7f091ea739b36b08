//! `claude-passthrough` accounts: a route, not a credential. Each request goes to the account's
//! Anthropic-compatible base URL with the client's own Anthropic credentials (its OAuth bearer
//! or API key in `authorization` / `x-api-key`) exactly as the client sent them; the relay key
//! that identified the team member came in `x-relay-key` (`filters::RELAY_KEY_HEADER`; the key
//! auth filter refuses such a request without credentials of its own) and goes no further. The relay never
//! stores these credentials and never judges the account by what the upstream said to them.

use super::{Call, PrepareError, Prepared, Provider, ProviderEnv, Target, Wire, anthropic, request};

/// The client headers that carry its own Anthropic credentials.
const CLIENT_CREDENTIALS: [&str; 2] = ["authorization", "x-api-key"];

/// The provider of `claude-passthrough` accounts.
pub struct Passthrough;

impl Provider for Passthrough {
    fn wire(&self) -> Wire {
        Wire::AnthropicMessages
    }

    fn prepare(&self, _env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        let Some(path) = call.op.anthropic_path() else {
            return Err(PrepareError::Request(
                "this account serves Anthropic Messages requests only".into(),
            ));
        };
        let path = target.base.path_and_query(path, call.query);
        let mut head = request::upstream_request(call.client, &path, &target.base.host_header, None, call.body.len())?;
        let mut any = false;
        for name in CLIENT_CREDENTIALS {
            for value in call.client.headers.get_all(name) {
                let mut value = value.clone();
                value.set_sensitive(true);
                head.append_header(name, value)?;
                any = true;
            }
        }
        if !any {
            return Err(PrepareError::Request(
                "send your own Anthropic credentials (Authorization: Bearer or x-api-key) with the relay key in x-relay-key".into(),
            ));
        }
        anthropic::default_version(&mut head)?;
        Ok(Prepared {
            head,
            body: call.body.clone(),
            response: super::ResponseKind::Anthropic,
            wire_model: None,
        })
    }

    fn observe(&self, headers: &http::HeaderMap, now_s: i64) -> Option<anthropic::UnifiedLimits> {
        anthropic::UnifiedLimits::from_headers(headers, now_s)
    }

    fn forwards_client_credentials(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Credential, Operation, UpstreamBase};
    use pingora::http::RequestHeader;

    #[test]
    fn the_clients_credentials_go_upstream_and_the_relay_key_does_not() {
        let mut c = RequestHeader::build("POST", b"/v1/messages?beta=true", None).unwrap();
        for (k, v) in [
            ("authorization", "Bearer sk-ant-oat01-client"),
            ("x-relay-key", "cr_team_member"),
            ("anthropic-beta", "oauth-2025-04-20,claude-code-20250219"),
            ("x-claude-code-session-id", "s1"),
        ] {
            c.append_header(k, v).unwrap();
        }
        let base = UpstreamBase::parse("http://127.0.0.1:9/").unwrap();
        let body = bytes::Bytes::from_static(br#"{"model":"claude-x"}"#);
        let call = Call {
            op: Operation::Messages,
            client: &c,
            query: Some("beta=true"),
            body: &body,
            upstream_model: "claude-x",
            stream: false,
        };
        let target = Target {
            base: &base,
            credential: &Credential::None,
            live: None,
            project: None,
        };
        let env = ProviderEnv {
            oauth_beta: String::new(),
            bedrock_models: Default::default(),
        };
        let p = Passthrough.prepare(&env, &call, &target).unwrap();
        let get = |k: &str| p.head.headers.get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("authorization").as_deref(), Some("Bearer sk-ant-oat01-client"));
        assert_eq!(get("x-relay-key"), None);
        assert_eq!(get("x-api-key"), None);
        assert_eq!(
            get("anthropic-beta").as_deref(),
            Some("oauth-2025-04-20,claude-code-20250219")
        );
        assert_eq!(p.head.uri.to_string(), "/v1/messages?beta=true");

        let mut bare = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        bare.append_header("x-relay-key", "cr_team_member").unwrap();
        let call = Call { client: &bare, ..call };
        assert!(matches!(
            Passthrough.prepare(&env, &call, &target),
            Err(PrepareError::Request(_))
        ));
    }
}
