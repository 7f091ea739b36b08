//! Accounts in the store: each field of a [`AccountRecord`] is read here, once per load, into its
//! typed value, and written here.
//!
//! A record may come from another relay version, or be sealed under another `secret_key`: what
//! this relay cannot read is an error naming the field, and the caller leaves the account out
//! (logged) rather than serve it with less than it was given.

use serde_json::{Map, Value};

use super::{AccountCredential, AccountDefinition, AccountSettings, FieldError, ProxyUrl};
use crate::secrets::Secrets;
use crate::store::{AccountRecord, OAuthMeta};

/// The record's settings.
pub fn settings(r: &AccountRecord) -> Result<AccountSettings, FieldError> {
    serde_path_to_error::deserialize(Value::Object(r.settings.clone())).map_err(|e| {
        let path = e.path().to_string();
        FieldError::new(
            if path == "." { "(record)".to_string() } else { path },
            e.into_inner().to_string(),
        )
    })
}

/// The record's credential, opened, for an account of the settings' kind.
pub fn credential(r: &AccountRecord, s: &AccountSettings, secrets: &Secrets) -> Result<AccountCredential, String> {
    let secret = secrets
        .open(&r.secret)
        .map_err(|e| format!("the credential cannot be opened: {e}"))?;
    AccountCredential::open(s.kind, &secret)
}

/// The record's outbound proxy, opened.
pub fn proxy(r: &AccountRecord, secrets: &Secrets) -> Result<Option<ProxyUrl>, String> {
    let Some(sealed) = &r.proxy else { return Ok(None) };
    let url = secrets
        .open(sealed)
        .map_err(|e| format!("stored proxy cannot be opened: {e}"))?;
    ProxyUrl::parse(&url)
        .map(Some)
        .map_err(|_| "stored proxy is not a usable proxy URL".to_string())
}

/// A stored account, every field read and checked.
#[derive(Debug, Clone)]
pub struct StoredAccount {
    pub id: String,
    pub definition: AccountDefinition,
    pub oauth: Option<OAuthMeta>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Reads a whole record: what the relay serves from.
pub fn open(r: &AccountRecord, secrets: &Secrets) -> Result<StoredAccount, String> {
    let settings = settings(r).map_err(|e| e.to_string())?;
    settings.validate().map_err(|e| e.to_string())?;
    let credential = credential(r, &settings, secrets)?;
    let proxy = proxy(r, secrets)?;
    Ok(StoredAccount {
        id: r.id.clone(),
        definition: AccountDefinition {
            settings,
            credential,
            proxy,
        },
        oauth: r.oauth.clone(),
        created_at: r.created_at,
    })
}

/// Writes the settings into the record, keeping the fields this relay does not know.
pub fn set_settings(r: &mut AccountRecord, s: &AccountSettings) -> Result<(), String> {
    let Value::Object(m) = serde_json::to_value(s).map_err(|e| e.to_string())? else {
        return Err("the settings are not a JSON object".into());
    };
    r.settings.retain(|k, _| !AccountSettings::FIELDS.contains(&k.as_str()));
    r.settings.extend(m);
    Ok(())
}

/// A new record for `definition`, its credential and proxy sealed.
pub fn new_record(
    id: String,
    definition: &AccountDefinition,
    secrets: &Secrets,
    created_at: i64,
) -> Result<AccountRecord, String> {
    let mut r = AccountRecord {
        id,
        settings: Map::new(),
        secret: secrets.seal(&definition.credential.to_secret()),
        proxy: definition.proxy.as_ref().map(|p| secrets.seal(p.url())),
        oauth: None,
        created_at,
    };
    set_settings(&mut r, &definition.settings)?;
    Ok(r)
}
