//! What differs between account kinds: how an account authenticates upstream.

use std::fmt;

use super::FieldError;
use crate::credentials::{Live, TokenPair};
use crate::providers::anthropic_console;
use crate::providers::bedrock::BedrockSecret;
use crate::store::AccountKind;

/// The credential fields of an account as written (relay.yaml, an admin request body): which of
/// them apply, and which are required, depends on the kind.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct CredentialFields {
    /// `claude-console` and `ccr`: the API key; `claude-oauth` in relay.yaml: a long-lived OAuth
    /// access token (setup token); `bedrock`: a Bedrock API key (instead of access keys).
    pub api_key: Option<String>,
    /// `bedrock`: SigV4 credentials, with an optional session token.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl CredentialFields {
    pub const NAMES: [&'static str; 4] = ["api_key", "access_key_id", "secret_access_key", "session_token"];

    /// Whether any field is given.
    pub fn any(&self) -> bool {
        self.api_key.is_some()
            || self.access_key_id.is_some()
            || self.secret_access_key.is_some()
            || self.session_token.is_some()
    }

    /// The field called `name`, for the deserializer that fills them.
    pub(super) fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            "api_key" => Some(&mut self.api_key),
            "access_key_id" => Some(&mut self.access_key_id),
            "secret_access_key" => Some(&mut self.secret_access_key),
            "session_token" => Some(&mut self.session_token),
            _ => None,
        }
    }
}

impl fmt::Debug for CredentialFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("CredentialFields")
            .field("api_key", &given(&self.api_key))
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &given(&self.secret_access_key))
            .field("session_token", &given(&self.session_token))
            .finish()
    }
}

/// How an account authenticates upstream, by kind. What the store seals is [`to_secret`].
///
/// [`to_secret`]: AccountCredential::to_secret
#[derive(Clone, PartialEq)]
pub enum AccountCredential {
    /// `claude-console` and `ccr`: an API key (`sk-ant-…` goes in `x-api-key`, anything else as a
    /// bearer token).
    ApiKey(String),
    /// `claude-oauth`: the token pair (a setup token has no refresh token).
    OAuth(TokenPair),
    /// `bedrock`: SigV4 access keys or a Bedrock API key.
    Bedrock(BedrockSecret),
    /// `claude-passthrough`: none; each client's own credentials are forwarded.
    None,
}

impl fmt::Debug for AccountCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountCredential::ApiKey(k) => write!(f, "ApiKey({})", crate::secrets::mask(k)),
            AccountCredential::OAuth(p) => write!(f, "OAuth({p:?})"),
            AccountCredential::Bedrock(s) => write!(f, "Bedrock({s:?})"),
            AccountCredential::None => write!(f, "None"),
        }
    }
}

/// Why a `gemini-oauth` account takes no `api_key`.
const GEMINI_OAUTH_ONLY: &str = "does not apply: gemini-oauth accounts are connected through the admin sign-in \
     (/admin/api/accounts/gemini-oauth/authorize and exchange, or import of Gemini CLI's oauth_creds.json)";

impl AccountCredential {
    /// The credential an account of `kind` gets from the fields given, checked.
    pub fn from_fields(kind: AccountKind, f: CredentialFields) -> Result<AccountCredential, FieldError> {
        if kind == AccountKind::ClaudePassthrough {
            for name in CredentialFields::NAMES {
                let mut f = f.clone();
                if f.slot(name).is_some_and(|v| v.is_some()) {
                    return Err(FieldError::new(
                        name,
                        "does not apply: claude-passthrough accounts have no credential; they forward each \
                         client's own Anthropic credentials",
                    ));
                }
            }
            return Ok(AccountCredential::None);
        }
        if kind == AccountKind::Bedrock {
            // `${AWS_SESSION_TOKEN:-}` may expand to nothing: no session token then.
            let some = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
            let secret = BedrockSecret {
                access_key_id: some(f.access_key_id),
                secret_access_key: some(f.secret_access_key),
                session_token: some(f.session_token),
                api_key: some(f.api_key),
            };
            let c = AccountCredential::Bedrock(secret);
            c.validate()?;
            return Ok(c);
        }
        for (name, v) in [
            ("access_key_id", &f.access_key_id),
            ("secret_access_key", &f.secret_access_key),
            ("session_token", &f.session_token),
        ] {
            if v.is_some() {
                return Err(FieldError::new(
                    name,
                    format!("applies to kind bedrock only, not {}", kind.as_str()),
                ));
            }
        }
        let key = match f.api_key.as_deref().map(str::trim) {
            Some(k) if !k.is_empty() => k.to_string(),
            _ => {
                return Err(FieldError::new(
                    "api_key",
                    match kind {
                        AccountKind::ClaudeConsole => "is required for kind claude-console",
                        AccountKind::Ccr => "is required for kind ccr",
                        AccountKind::OpenAi => "is required for kind openai",
                        AccountKind::AzureOpenAi => "is required for kind azure-openai",
                        AccountKind::GeminiApi => "is required for kind gemini-api",
                        AccountKind::OpenAiOauth => {
                            "does not apply: openai-oauth accounts are connected through the admin sign-in \
                             (/admin/api/accounts/openai-oauth/authorize and exchange, or import of Codex's auth.json)"
                        }
                        AccountKind::GeminiOauth => GEMINI_OAUTH_ONLY,
                        AccountKind::ClaudePassthrough => "does not apply to kind claude-passthrough",
                        // Refresh tokens rotate, so only a long-lived token fits a file.
                        AccountKind::ClaudeOauth | AccountKind::Bedrock => {
                            "is required for kind claude-oauth: a long-lived OAuth access token (setup token); \
                             accounts with refresh tokens are added through the admin API"
                        }
                    },
                ));
            }
        };
        if kind == AccountKind::GeminiOauth {
            return Err(FieldError::new("api_key", GEMINI_OAUTH_ONLY));
        }
        if kind == AccountKind::OpenAiOauth {
            return Err(FieldError::new(
                "api_key",
                "does not apply: openai-oauth accounts are connected through the admin sign-in \
                 (/admin/api/accounts/openai-oauth/authorize and exchange, or import of Codex's auth.json)",
            ));
        }
        let c = match kind {
            AccountKind::ClaudeOauth => AccountCredential::OAuth(TokenPair {
                access_token: key,
                refresh_token: None,
            }),
            _ => AccountCredential::ApiKey(key),
        };
        c.validate()?;
        Ok(c)
    }

    /// The credential of a stored record of `kind`, from its opened secret.
    pub fn open(kind: AccountKind, secret: &str) -> Result<AccountCredential, String> {
        let c = match kind {
            AccountKind::ClaudeConsole
            | AccountKind::Ccr
            | AccountKind::OpenAi
            | AccountKind::AzureOpenAi
            | AccountKind::GeminiApi => AccountCredential::ApiKey(secret.to_string()),
            AccountKind::ClaudeOauth | AccountKind::OpenAiOauth | AccountKind::GeminiOauth => {
                AccountCredential::OAuth(TokenPair::parse(secret))
            }
            AccountKind::Bedrock => AccountCredential::Bedrock(BedrockSecret::parse(secret)?),
            AccountKind::ClaudePassthrough => AccountCredential::None,
        };
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// Checks that the credential can be sent: every header it makes can be built.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            AccountCredential::ApiKey(k) => anthropic_console::auth_header(k)
                .map(drop)
                .map_err(|r| FieldError::new("api_key", r)),
            AccountCredential::OAuth(p) => Live::new(p.clone(), None, 0)
                .map(drop)
                .map_err(|r| FieldError::new("api_key", r)),
            AccountCredential::Bedrock(s) => s.validate().map_err(|r| {
                let field = if s.api_key.is_some() && s.access_key_id.is_none() {
                    "api_key"
                } else {
                    "access_key_id"
                };
                FieldError::new(field, r)
            }),
            AccountCredential::None => Ok(()),
        }
    }

    /// Whether this is the credential of an account of `kind`.
    pub fn fits(&self, kind: AccountKind) -> bool {
        matches!(
            (self, kind),
            (
                AccountCredential::ApiKey(_),
                AccountKind::ClaudeConsole
                    | AccountKind::Ccr
                    | AccountKind::OpenAi
                    | AccountKind::AzureOpenAi
                    | AccountKind::GeminiApi
            ) | (
                AccountCredential::OAuth(_),
                AccountKind::ClaudeOauth | AccountKind::OpenAiOauth | AccountKind::GeminiOauth
            ) | (AccountCredential::Bedrock(_), AccountKind::Bedrock)
                | (AccountCredential::None, AccountKind::ClaudePassthrough)
        )
    }

    /// The text the store seals: the API key, or the token pair or Bedrock keys as JSON.
    pub fn to_secret(&self) -> String {
        match self {
            AccountCredential::ApiKey(k) => k.clone(),
            AccountCredential::OAuth(p) => p.to_secret(),
            AccountCredential::Bedrock(s) => s.to_secret(),
            AccountCredential::None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> CredentialFields {
        let mut f = CredentialFields::default();
        for (k, v) in pairs {
            *f.slot(k).unwrap() = Some(v.to_string());
        }
        f
    }

    #[test]
    fn each_kind_takes_its_own_fields() {
        let console = AccountCredential::from_fields(AccountKind::ClaudeConsole, fields(&[("api_key", " sk-ant-x ")]));
        assert_eq!(console.unwrap(), AccountCredential::ApiKey("sk-ant-x".into()));
        let e = AccountCredential::from_fields(AccountKind::Ccr, fields(&[("api_key", "k"), ("access_key_id", "A")]));
        assert_eq!(e.unwrap_err().field, "access_key_id");
        let e = AccountCredential::from_fields(AccountKind::ClaudeConsole, fields(&[("api_key", "  ")]));
        assert_eq!(e.unwrap_err().field, "api_key");
        let e = AccountCredential::from_fields(AccountKind::ClaudeConsole, fields(&[("api_key", "sk-ant\nx")]));
        assert!(e.unwrap_err().reason.contains("not allowed in a header"));
        let oauth = AccountCredential::from_fields(AccountKind::ClaudeOauth, fields(&[("api_key", "sk-ant-oat01-x")]));
        assert!(matches!(oauth.unwrap(), AccountCredential::OAuth(p) if p.refresh_token.is_none()));
        let bedrock = AccountCredential::from_fields(
            AccountKind::Bedrock,
            fields(&[
                ("access_key_id", "AKIA"),
                ("secret_access_key", "s"),
                ("session_token", ""),
            ]),
        )
        .unwrap();
        assert!(bedrock.fits(AccountKind::Bedrock) && !bedrock.fits(AccountKind::Ccr));
        let e = AccountCredential::from_fields(AccountKind::Bedrock, fields(&[("access_key_id", "AKIA")]));
        assert_eq!(e.unwrap_err().field, "access_key_id");
    }

    #[test]
    fn a_sealed_secret_opens_as_its_kind() {
        let b = AccountCredential::from_fields(AccountKind::Bedrock, fields(&[("api_key", "bedrock-key")])).unwrap();
        assert_eq!(
            AccountCredential::open(AccountKind::Bedrock, &b.to_secret()).unwrap(),
            b
        );
        assert!(AccountCredential::open(AccountKind::Bedrock, "not json").is_err());
        let p = TokenPair {
            access_token: "a".into(),
            refresh_token: Some("r".into()),
        };
        let o = AccountCredential::OAuth(p);
        assert_eq!(
            AccountCredential::open(AccountKind::ClaudeOauth, &o.to_secret()).unwrap(),
            o
        );
        assert!(AccountCredential::open(AccountKind::ClaudeConsole, "a\nb").is_err());
        assert!(!format!("{:?}", AccountCredential::ApiKey("sk-ant-api03-secretvalue".into())).contains("secretvalue"));
    }
}
