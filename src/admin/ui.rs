//! The web panel on the admin listener: `/ui` redirects to `/ui/`, and `/ui/{*path}` answers from
//! the files embedded with the cargo feature `panel` (see [`crate::panel`] for the rules: MIME
//! types, ETags, cache headers, the SPA fallback, refused paths). Without the feature every `/ui`
//! path is a 404 that says so. These routes sit beside `/admin/api`, `/health` and `/metrics` and
//! never shadow them: they match only paths under `/ui`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::panel::{self, Page};

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(root))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(file))
}

async fn root() -> Response {
    if !panel::built_in() {
        return respond(panel::answer(Page::Admin, "", None));
    }
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, "/ui/")]).into_response()
}

async fn index(headers: HeaderMap) -> Response {
    respond(panel::answer(Page::Admin, "", if_none_match(&headers)))
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    respond(panel::answer(Page::Admin, &path, if_none_match(&headers)))
}

fn if_none_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
}

fn respond(a: panel::Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = (status, a.body.into_owned()).into_response();
    for (name, value) in a.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            res.headers_mut().insert(name, v);
        }
    }
    res
}
