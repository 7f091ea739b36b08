//! The web panel's files, embedded in the binary when it is built with the cargo feature `panel`
//! (from `web/dist`, see `web/README.md`), and how one of them is answered: the admin SPA under
//! `/ui/` on the admin listener, the key self-service page under `/stats` on the relay listener.
//!
//! Both listeners answer through [`answer`], which knows nothing of axum or Pingora: it maps a
//! request path to a status, headers and a body. Rules: a path with `..`, `//` or `\` is refused
//! (400); a file that exists is served with its MIME type and a SHA-256 ETag (`If-None-Match`
//! gives 304); files under `assets/` carry a content hash in their name and are cached for a
//! year, everything else (the HTML, `theme.js`) is `no-cache`; a missing path that looks like a
//! file (its last segment has an extension) is 404, any other path gets the page's HTML (SPA
//! routes). Every answer carries the panel's Content-Security-Policy and `nosniff`.

use std::borrow::Cow;

/// The Content-Security-Policy of every panel answer: the panel loads only its own scripts and
/// styles (Vue's style bindings need `'unsafe-inline'` for styles), and may not be framed.
pub const CSP: &str =
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'";

/// What the answer to `/ui` is when the binary has no panel.
pub const NOT_BUILT: &str = "panel not built in (cargo feature `panel`)";

/// Which page a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The admin SPA: `web/dist/index.html` and the files beside it, served under `/ui/`.
    Admin,
    /// The key self-service page: `web/dist/stats/stats.html` and `web/dist/stats/*`, under `/stats`.
    Stats,
}

impl Page {
    fn html(self) -> &'static str {
        match self {
            Page::Admin => "index.html",
            Page::Stats => "stats/stats.html",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Page::Admin => "",
            Page::Stats => "stats/",
        }
    }
}

/// A ready answer: status, headers and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Cow<'static, [u8]>,
}

/// Whether this binary carries the panel.
pub const fn built_in() -> bool {
    cfg!(feature = "panel")
}

#[cfg(feature = "panel")]
mod files {
    #[derive(rust_embed::Embed)]
    #[folder = "web/dist"]
    pub struct Dist;

    /// The file's bytes and the hex SHA-256 of its content.
    pub fn get(path: &str) -> Option<(std::borrow::Cow<'static, [u8]>, String)> {
        let f = Dist::get(path)?;
        Some((f.data, hex::encode(f.metadata.sha256_hash())))
    }
}

#[cfg(not(feature = "panel"))]
mod files {
    pub fn get(_path: &str) -> Option<(std::borrow::Cow<'static, [u8]>, String)> {
        None
    }
}

fn mime(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        "map" => "application/json",
        _ => "application/octet-stream",
    }
}

fn plain(status: u16, text: &str) -> Answer {
    Answer {
        status,
        headers: vec![
            ("content-type", "text/plain; charset=utf-8".into()),
            ("cache-control", "no-store".into()),
            ("content-security-policy", CSP.into()),
            ("x-content-type-options", "nosniff".into()),
        ],
        body: Cow::Owned(text.as_bytes().to_vec()),
    }
}

/// The answer for `rel`, the request path after the page's prefix (`/ui/` or `/stats/`), without
/// its query. `if_none_match` is the request's `If-None-Match` header.
pub fn answer(page: Page, rel: &str, if_none_match: Option<&str>) -> Answer {
    if !built_in() {
        return plain(404, NOT_BUILT);
    }
    if rel.contains("..") || rel.contains("//") || rel.contains('\\') {
        return plain(400, "bad path");
    }
    let rel = rel.trim_start_matches('/');
    let last = rel.rsplit('/').next().unwrap_or("");
    let looks_like_file = last.contains('.');
    let (file, found) = if rel.is_empty() {
        (page.html().to_string(), files::get(page.html()))
    } else {
        let name = format!("{}{rel}", page.dir());
        // The other page's HTML is not served under this prefix.
        let foreign = name.ends_with(".html") && name != page.html();
        let got = if foreign { None } else { files::get(&name) };
        match got {
            Some(f) => (name, Some(f)),
            None if looks_like_file => return plain(404, "not found"),
            None => (page.html().to_string(), files::get(page.html())),
        }
    };
    let Some((body, sha)) = found else {
        return plain(404, NOT_BUILT);
    };
    let etag = format!("\"{sha}\"");
    let immutable = file.starts_with(&format!("{}assets/", page.dir()));
    let mut headers = vec![
        ("etag", etag.clone()),
        (
            "cache-control",
            if immutable {
                "public, max-age=31536000, immutable".into()
            } else {
                "no-cache".into()
            },
        ),
        ("content-security-policy", CSP.into()),
        ("x-content-type-options", "nosniff".into()),
        ("referrer-policy", "no-referrer".into()),
    ];
    let matches = if_none_match.is_some_and(|h| h.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return Answer {
            status: 304,
            headers,
            body: Cow::Borrowed(&[]),
        };
    }
    headers.push(("content-type", mime(&file).into()));
    Answer {
        status: 200,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_by_extension() {
        assert_eq!(mime("assets/a-1.js"), "text/javascript; charset=utf-8");
        assert_eq!(mime("index.html"), "text/html; charset=utf-8");
        assert_eq!(mime("x.CSS"), "text/css; charset=utf-8");
        assert_eq!(mime("blob"), "application/octet-stream");
    }

    #[test]
    fn traversal_is_refused() {
        for p in ["../Cargo.toml", "a//b", "a\\b", "assets/../../x"] {
            let a = answer(Page::Admin, p, None);
            assert!(a.status == 400 || a.status == 404, "{p}: {}", a.status);
            if built_in() {
                assert_eq!(a.status, 400, "{p}");
            }
        }
    }

    #[cfg(not(feature = "panel"))]
    #[test]
    fn without_the_feature_the_panel_is_404() {
        let a = answer(Page::Admin, "", None);
        assert_eq!(a.status, 404);
        assert_eq!(&*a.body, NOT_BUILT.as_bytes());
    }

    #[cfg(feature = "panel")]
    #[test]
    fn spa_fallback_cache_headers_and_etag() {
        let header = |a: &Answer, n: &str| a.headers.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        let index = answer(Page::Admin, "", None);
        assert_eq!(index.status, 200);
        assert_eq!(header(&index, "cache-control").as_deref(), Some("no-cache"));
        let route = answer(Page::Admin, "keys", None);
        assert_eq!(route.status, 200);
        assert_eq!(route.body, index.body);
        assert_eq!(answer(Page::Admin, "assets/missing-123.js", None).status, 404);
        let etag = header(&index, "etag").unwrap();
        assert_eq!(answer(Page::Admin, "", Some(&etag)).status, 304);
        let stats = answer(Page::Stats, "", None);
        assert_eq!(stats.status, 200);
        assert_ne!(stats.body, index.body);
        // The admin HTML is not reachable under /stats.
        assert_eq!(answer(Page::Stats, "index.html", None).status, 404);
    }
}
