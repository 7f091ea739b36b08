//! Settings changed in the panel (admins only): the display currency beside USD with its rates,
//! and the public address of the relay for the setup snippets. Each one set here overrides the
//! configuration's value; `null` goes back to it. They live in the store, so every instance
//! sharing it shows the same.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, json_body, store_error};
use crate::store::{DisplayCurrency, PanelSettings};

/// The currency shown beside USD: the settings' when set, else the configuration's.
pub fn currency<'a>(state: &'a AdminState, settings: &'a PanelSettings) -> &'a DisplayCurrency {
    settings.currency.as_ref().unwrap_or(&state.config.currency)
}

/// `{code, rate}`: what a client multiplies USD amounts by to show the display currency.
pub fn currency_json(c: &DisplayCurrency) -> Value {
    json!({"code": c.display, "rate": c.rate()})
}

/// The settings as the API shows them: each effective value and where it comes from.
pub async fn view_json(state: &AdminState) -> Result<Value, ApiError> {
    let s = state.store.get_settings().await.map_err(store_error)?;
    let c = currency(state, &s);
    Ok(json!({
        "currency": {
            "display": c.display,
            "rates": c.rates,
            "source": if s.currency.is_some() { "settings" } else { "config" },
        },
        "public_base_url": s.public_base_url,
    }))
}

/// `GET /admin/api/settings`.
pub async fn get(State(state): State<AdminState>, _actor: Actor) -> Result<Response, ApiError> {
    Ok(Json(view_json(&state).await?).into_response())
}

/// A change: an absent field stays, `null` goes back to the configuration's value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    #[serde(default, with = "serde_with_null")]
    currency: Option<Option<DisplayCurrency>>,
    #[serde(default, with = "serde_with_null")]
    public_base_url: Option<Option<String>>,
}

/// `Option<Option<T>>` from a field that may be absent (outer `None`) or `null` (inner `None`).
mod serde_with_null {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

fn check_url(u: &str) -> Result<String, ApiError> {
    let u = u.trim().trim_end_matches('/');
    let ok = (u.starts_with("http://") || u.starts_with("https://"))
        && u.len() <= 300
        && reqwest::Url::parse(u)
            .is_ok_and(|p| p.host_str().is_some() && p.query().is_none() && p.fragment().is_none())
        && !u.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(u.to_string())
    } else {
        Err(bad_request(
            "`public_base_url` must be an http(s) URL without query or fragment, e.g. https://relay.example.com",
        ))
    }
}

/// `PATCH /admin/api/settings`.
pub async fn update(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let change: Change = json_body(&body)?;
    let mut s = state.store.get_settings().await.map_err(store_error)?;
    if let Some(c) = change.currency {
        if let Some(c) = &c {
            c.validate().map_err(|r| bad_request(format!("`currency`: {r}")))?;
        }
        s.currency = c;
    }
    if let Some(u) = change.public_base_url {
        s.public_base_url = u.as_deref().map(check_url).transpose()?;
    }
    state.store.put_settings(&s).await.map_err(store_error)?;
    Ok(Json(view_json(&state).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            check_url(" https://relay.example.com/ ").unwrap(),
            "https://relay.example.com"
        );
        assert_eq!(check_url("http://10.0.0.5:3000").unwrap(), "http://10.0.0.5:3000");
        for bad in [
            "relay.example.com",
            "ftp://x",
            "https://",
            "https://a/?q=1",
            "https://a b",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn currencies_are_checked() {
        let mut c = DisplayCurrency::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.rate(), 1.0);
        c.display = "CNY".into();
        assert!(c.validate().is_err(), "no rate for the display currency");
        c.rates.insert("CNY".into(), 7.1);
        assert!(c.validate().is_ok());
        assert_eq!(c.rate(), 7.1);
        c.rates.insert("eur".into(), 0.9);
        assert!(c.validate().is_err());
        c.rates.remove("eur");
        c.rates.insert("EUR".into(), -1.0);
        assert!(c.validate().is_err());
    }
}
