//! Upstream accounts as relay.yaml, the admin API and the store define them: one set of
//! [`AccountSettings`] with one [`AccountSettings::validate`], and an [`AccountCredential`] for
//! what differs by kind.
//!
//! Every value is typed when it is read: a configured account is checked once at start, an account
//! written through the admin API once per request, a stored record once per load (see
//! [`stored`]). Nothing downstream parses a setting again.

pub mod credential;
pub mod stored;
pub mod values;

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

pub use credential::{AccountCredential, CredentialFields};
pub use values::{BaseUrl, Cooldowns, ProxyUrl, Region, TimeOfDay};

use crate::providers::bedrock::models::Profile;
use crate::store::{AccountKind, default_priority};

/// A setting that is not acceptable, and why. `field` is the setting's name (`cooldowns.6xx`,
/// `api_key`); relay.yaml prefixes it with the account's place (`accounts[0].`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.field, self.reason)
    }
}

/// What every account has, whatever its kind: its name, where it sends requests and how the
/// scheduler treats it. Its JSON form is the one the store keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountSettings {
    #[serde(deserialize_with = "values::trimmed")]
    pub name: String,
    pub kind: AccountKind,
    /// Where requests go; absent: the kind's default (see [`AccountSettings::base_url_or`]).
    /// Stored accounts always have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<BaseUrl>,
    /// Lower numbers are tried first.
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// When set, the only models this account serves (names as the client sends them).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Requested model name → upstream model name.
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    /// Group this account belongs to (keys may bind to `group:<name>`).
    #[serde(
        default,
        deserialize_with = "values::trimmed_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub group: Option<String>,
    /// Most requests this account serves at once (across instances sharing the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Spend per day (USD) after which the account leaves the pool until `quota_reset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_quota_usd: Option<f64>,
    /// When the daily quota resets, UTC (default 00:00).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_reset: Option<TimeOfDay>,
    /// Relative share among accounts of the same priority (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Cooldown overrides by error class, same classes as `scheduler.cooldowns`.
    #[serde(default, skip_serializing_if = "Cooldowns::is_empty")]
    pub cooldowns: Cooldowns,
    /// `bedrock`: the AWS region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
    /// `bedrock`: the cross-region inference profile; by default the region's geography.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_profile: Option<Profile>,
    /// `azure-openai`: the `api-version` of the deployment paths (`2025-04-01-preview`); absent
    /// or `v1`: the v1 API.
    #[serde(
        default,
        deserialize_with = "values::trimmed_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    /// `azure-openai`: model name (after `model_map`) → deployment name; a model without an entry
    /// goes to a deployment of its own name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, String>,
    /// `gemini-oauth`: the Google Cloud project Code Assist requests are billed to; absent: the
    /// one `loadCodeAssist` names for the account (found once and kept).
    #[serde(
        default,
        deserialize_with = "values::trimmed_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub project_id: Option<String>,
}

fn default_true() -> bool {
    true
}

impl AccountSettings {
    /// The settings' field names, in their serialized order.
    pub const FIELDS: [&'static str; 18] = [
        "name",
        "kind",
        "base_url",
        "priority",
        "enabled",
        "models",
        "model_map",
        "group",
        "max_concurrency",
        "daily_quota_usd",
        "quota_reset",
        "weight",
        "cooldowns",
        "region",
        "inference_profile",
        "api_version",
        "deployments",
        "project_id",
    ];

    /// Checks the rules no single value's type holds; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        values::check_label(&self.name).map_err(|r| FieldError::new("name", r))?;
        if let Some(m) = &self.models
            && m.iter().any(|s| s.trim().is_empty())
        {
            return Err(FieldError::new("models", "model names must not be empty"));
        }
        if self
            .model_map
            .iter()
            .any(|(from, to)| from.trim().is_empty() || to.trim().is_empty())
        {
            return Err(FieldError::new("model_map", "model names must not be empty"));
        }
        if let Some(g) = &self.group {
            values::check_label(g).map_err(|r| FieldError::new("group", r))?;
        }
        if self.max_concurrency == Some(0) {
            return Err(FieldError::new(
                "max_concurrency",
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        if let Some(q) = self.daily_quota_usd
            && !(q.is_finite() && q > 0.0)
        {
            return Err(FieldError::new("daily_quota_usd", "must be a positive number of USD"));
        }
        if self.weight == Some(0) {
            return Err(FieldError::new("weight", "must be at least 1"));
        }
        if self.kind == AccountKind::AzureOpenAi {
            if self.base_url.is_none() {
                return Err(FieldError::new(
                    "base_url",
                    "is required for kind azure-openai (https://<resource>.openai.azure.com)",
                ));
            }
            if let Some(v) = &self.api_version
                && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
            {
                return Err(FieldError::new(
                    "api_version",
                    "must be an API version such as 2025-04-01-preview, or v1",
                ));
            }
            if self
                .deployments
                .iter()
                .any(|(m, d)| m.trim().is_empty() || d.trim().is_empty() || d.contains('/'))
            {
                return Err(FieldError::new(
                    "deployments",
                    "maps model names to deployment names; neither may be empty, and a deployment has no `/`",
                ));
            }
        } else {
            for (f, given) in [
                ("api_version", self.api_version.is_some()),
                ("deployments", !self.deployments.is_empty()),
            ] {
                if given {
                    return Err(FieldError::new(
                        f,
                        format!("applies to kind azure-openai only, not {}", self.kind.as_str()),
                    ));
                }
            }
        }
        if let Some(p) = &self.project_id {
            if self.kind != AccountKind::GeminiOauth {
                return Err(FieldError::new(
                    "project_id",
                    format!("applies to kind gemini-oauth only, not {}", self.kind.as_str()),
                ));
            }
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b':')
            {
                return Err(FieldError::new(
                    "project_id",
                    "must be a Google Cloud project id such as my-project-123",
                ));
            }
        }
        if self.kind == AccountKind::Bedrock {
            if self.region.is_none() {
                return Err(FieldError::new(
                    "region",
                    "is required for kind bedrock (e.g. us-east-1)",
                ));
            }
        } else {
            for (f, given) in [
                ("region", self.region.is_some()),
                ("inference_profile", self.inference_profile.is_some()),
            ] {
                if given {
                    return Err(FieldError::new(
                        f,
                        format!("applies to kind bedrock only, not {}", self.kind.as_str()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Where the account's requests go: `base_url`, else its kind's default: the region's Bedrock
    /// endpoint, or the provider's base from `providers:`.
    pub fn base_url_or<'a>(&'a self, bases: &'a DefaultBases) -> &'a BaseUrl {
        match (&self.base_url, &self.region) {
            (Some(b), _) => b,
            (None, Some(r)) if self.kind == AccountKind::Bedrock => r.endpoint(),
            _ => match self.kind {
                AccountKind::OpenAi | AccountKind::AzureOpenAi => &bases.openai,
                AccountKind::OpenAiOauth => &bases.codex,
                AccountKind::GeminiApi => &bases.gemini,
                AccountKind::GeminiOauth => &bases.code_assist,
                _ => &bases.anthropic,
            },
        }
    }

    /// The minutes after midnight UTC when the daily quota resets.
    pub fn quota_reset_minute(&self) -> u32 {
        self.quota_reset.map_or(0, TimeOfDay::minute)
    }
}

/// The base URLs of accounts that name none, from `providers:`.
#[derive(Debug, Clone)]
pub struct DefaultBases {
    /// `providers.anthropic.api_base`: Claude accounts.
    pub anthropic: BaseUrl,
    /// `providers.openai.api_base`: `openai` accounts.
    pub openai: BaseUrl,
    /// `providers.openai.codex_base`: `openai-oauth` accounts.
    pub codex: BaseUrl,
    /// `providers.google.api_base`: `gemini-api` accounts.
    pub gemini: BaseUrl,
    /// `providers.google.code_assist_base`: `gemini-oauth` accounts.
    pub code_assist: BaseUrl,
}

/// An account with its credential and outbound proxy: what relay.yaml defines, and what a stored
/// record holds (sealed).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountDefinition {
    pub settings: AccountSettings,
    pub credential: AccountCredential,
    pub proxy: Option<ProxyUrl>,
}

/// An account as relay.yaml and `POST /admin/api/accounts` write it: the settings, the credential
/// fields of its kind and an outbound proxy, each value typed as it is read. Any other field is
/// refused, naming it.
#[derive(Debug, Clone)]
pub struct AccountInput {
    pub settings: AccountSettings,
    pub credential: CredentialFields,
    pub proxy: Option<ProxyUrl>,
}

impl AccountInput {
    /// Every field an account definition may have: [`AccountSettings::FIELDS`],
    /// [`CredentialFields::NAMES`] and `proxy`.
    pub const FIELDS: [&'static str; 23] = [
        "name",
        "kind",
        "base_url",
        "priority",
        "enabled",
        "models",
        "model_map",
        "group",
        "max_concurrency",
        "daily_quota_usd",
        "quota_reset",
        "weight",
        "cooldowns",
        "region",
        "inference_profile",
        "api_version",
        "deployments",
        "project_id",
        "api_key",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "proxy",
    ];

    /// Checks the settings and the credential of the account's kind.
    pub fn validate(self) -> Result<AccountDefinition, FieldError> {
        self.settings.validate()?;
        let credential = AccountCredential::from_fields(self.settings.kind, self.credential)?;
        Ok(AccountDefinition {
            settings: self.settings,
            credential,
            proxy: self.proxy,
        })
    }
}

impl<'de> Deserialize<'de> for AccountInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Input;
        impl<'de> Visitor<'de> for Input {
            type Value = AccountInput;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an account")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AccountInput, A::Error> {
                let mut others = Others::default();
                let settings = AccountSettings::deserialize(de::value::MapAccessDeserializer::new(SettingsOnly {
                    map,
                    others: &mut others,
                }))?;
                Ok(AccountInput {
                    settings,
                    credential: others.credential,
                    proxy: others.proxy,
                })
            }
        }
        d.deserialize_map(Input)
    }
}

/// What an account definition has besides its settings.
#[derive(Default)]
struct Others {
    credential: CredentialFields,
    proxy: Option<ProxyUrl>,
    seen: Vec<&'static str>,
}

/// The entries of an account definition with the settings' fields passed on (to the settings'
/// own deserializer) and the others taken out. Keys and values are read through the map given,
/// so an error names the field however deeply it sits (`cooldowns.6xx`).
struct SettingsOnly<'o, A> {
    map: A,
    others: &'o mut Others,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SettingsOnly<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<String>()? {
            if AccountSettings::FIELDS.contains(&key.as_str()) {
                return seed.deserialize(key.into_deserializer()).map(Some);
            }
            let Some(&name) = AccountInput::FIELDS.iter().find(|f| **f == key) else {
                return Err(de::Error::unknown_field(&key, &AccountInput::FIELDS));
            };
            if self.others.seen.contains(&name) {
                return Err(de::Error::duplicate_field(name));
            }
            self.others.seen.push(name);
            match self.others.credential.slot(name) {
                Some(slot) => *slot = self.map.next_value()?,
                None => self.others.proxy = self.map.next_value()?,
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests;
