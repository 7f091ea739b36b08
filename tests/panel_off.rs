//! A relay built without the cargo feature `panel` (the proxy-only build, no Node needed): `/ui`
//! says the panel is not built in, the API beside it still answers, and `/stats` on the relay
//! listener is a 404. With the feature, `tests/panel_browser.rs` tests the panel itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(not(feature = "panel"))]

mod support;

use support::{RelayProcess, client};

#[tokio::test]
async fn without_the_feature_ui_and_stats_say_so() {
    let relay = RelayProcess::start("").await;
    for path in ["/ui", "/ui/", "/ui/keys", "/ui/assets/index-1.js"] {
        let res = client().get(format!("{}{path}", relay.admin())).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
        assert_eq!(
            res.text().await.unwrap(),
            "panel not built in (cargo feature `panel`)",
            "{path}"
        );
    }
    let api = client()
        .get(format!("{}/admin/api/keys", relay.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let stats = client().get(format!("{}/stats", relay.base())).send().await.unwrap();
    assert_eq!(stats.status(), 404);
}
