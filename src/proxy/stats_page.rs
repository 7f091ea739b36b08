//! The key self-service page at `/stats` on the relay listener (config `stats_page`), answered from
//! the panel files embedded with the cargo feature `panel` ([`crate::panel`]). The page itself
//! holds no data: it asks `/api/v1/key/usage` with the key the holder typed, like any relay call.

use bytes::Bytes;
use pingora::http::ResponseHeader;

use super::Session;
use crate::panel::{self, Page};

/// The part of `path` after `/stats`, when the path is the page or one of its files.
pub fn page_path(path: &str) -> Option<&str> {
    match path.strip_prefix("/stats")? {
        "" => Some(""),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// Answers `GET`/`HEAD` `/stats…` from the embedded files.
pub async fn respond(session: &mut Session, rel: &str) -> pingora::Result<u16> {
    let answer = if panel::built_in() {
        let inm = session
            .req_header()
            .headers
            .get(http::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        panel::answer(Page::Stats, rel, inm.as_deref())
    } else {
        panel::Answer {
            status: 404,
            headers: vec![("content-type", "text/plain; charset=utf-8".into())],
            body: std::borrow::Cow::Borrowed(panel::NOT_BUILT.as_bytes()),
        }
    };
    let mut h = ResponseHeader::build(answer.status, Some(answer.headers.len() + 1))?;
    for (name, value) in &answer.headers {
        h.insert_header(*name, value.as_str())?;
    }
    h.insert_header("content-length", answer.body.len().to_string())?;
    let head_only = session.req_header().method == http::Method::HEAD || answer.body.is_empty();
    session.write_response_header(Box::new(h)).await?;
    if !head_only {
        session
            .write_response_body(Bytes::from(answer.body.into_owned()), true)
            .await?;
    }
    Ok(answer.status)
}

#[cfg(test)]
mod tests {
    use super::page_path;

    #[test]
    fn only_the_page_and_its_files() {
        assert_eq!(page_path("/stats"), Some(""));
        assert_eq!(page_path("/stats/"), Some("/"));
        assert_eq!(page_path("/stats/assets/a.js"), Some("/assets/a.js"));
        assert_eq!(page_path("/statsx"), None);
        assert_eq!(page_path("/v1/stats"), None);
    }
}
