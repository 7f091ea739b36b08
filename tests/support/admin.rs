//! An admin API session on a test relay that keeps every answer, so a test can check that none of
//! them shows a secret.
#![allow(dead_code)]

use std::sync::Mutex;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{RelayProcess, client};

pub struct Answer {
    pub status: StatusCode,
    pub json: Value,
    pub text: String,
}

pub struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
    answers: Mutex<Vec<String>>,
}

impl Admin {
    pub async fn login(relay: &RelayProcess) -> Admin {
        Admin {
            base: relay.admin(),
            token: relay.admin_token().await,
            http: client(),
            answers: Mutex::new(Vec::new()),
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        self.answers.lock().unwrap().push(text.clone());
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, json, text }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PATCH, path, Some(body)).await
    }

    /// One account's view by id.
    pub async fn account(&self, id: &str) -> Value {
        let a = self.get(&format!("/admin/api/accounts/{id}")).await;
        assert_eq!(a.status, 200, "{}", a.text);
        a.json
    }

    /// Whether the account list has an account of this name.
    pub async fn lists(&self, name: &str) -> bool {
        let list = self.get("/admin/api/accounts").await;
        list.json["accounts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["name"] == name))
    }

    /// Fails when `leaked_in` finds a secret in any answer so far.
    pub fn assert_none_shows(&self, leaked_in: impl Fn(&str) -> Vec<String>) {
        for text in self.answers.lock().unwrap().iter() {
            let leaked = leaked_in(text);
            assert!(leaked.is_empty(), "an admin answer shows a token ({leaked:?}): {text}");
        }
    }
}

/// A 400 in the admin API's error shape.
pub fn assert_400(a: &Answer, what: &str) {
    assert_eq!(a.status, 400, "{what} → {}", a.text);
    assert!(a.json["error"]["type"].is_string(), "{what} → {}", a.text);
    assert!(
        a.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what} → {}",
        a.text
    );
}
