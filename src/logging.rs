//! Logging to standard error, with secrets taken out of every line at every level.
//!
//! The relay's own log lines never carry credentials, but at `debug` and `trace` Pingora and the
//! HTTP libraries print whole request heads (`x-api-key`, `Authorization`, `?key=`) and the
//! upstream request with the account's key. Every formatted line therefore passes through
//! [`redact`] before it is written: values of credential headers, `key=` query parameters, bearer
//! tokens, and anything shaped like a client key (`cr_…`) or an Anthropic key (`sk-ant-…`) are
//! replaced with `[redacted]`.

use std::borrow::Cow;
use std::io::Write;

/// Header names whose values are credentials (matched case-insensitively).
const SECRET_HEADERS: [&str; 8] = [
    "x-api-key",
    "authorization",
    "proxy-authorization",
    "x-goog-api-key",
    "api-key",
    "cookie",
    "set-cookie",
    "x-amz-security-token",
];
/// Prefixes of secrets that are redacted wherever they appear.
const SECRET_PREFIXES: [&str; 3] = ["cr_", "sk-ant-", "sk-"];
const REDACTED: &str = "[redacted]";

/// Installs the global subscriber: `RELAY_LOG` (or `RUST_LOG`) filters, default `info`; colour
/// only on a terminal.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingWriter(Vec::new()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Collects one formatted event and writes it, redacted, to standard error when dropped.
struct RedactingWriter(Vec<u8>);

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let _ = std::io::stderr().write_all(redact(&text).as_bytes());
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=' | b'%')
}

/// The line with every secret it shows replaced by `[redacted]`.
pub fn redact(line: &str) -> Cow<'_, str> {
    let lower = line.to_ascii_lowercase();
    // Cheap check first: most lines mention nothing secret-shaped.
    let suspicious = SECRET_HEADERS.iter().any(|h| lower.contains(h))
        || lower.contains("key=")
        || lower.contains("bearer")
        || SECRET_PREFIXES.iter().any(|p| line.contains(p));
    if !suspicious {
        return Cow::Borrowed(line);
    }
    let bytes = line.as_bytes();
    // Byte ranges to replace, found on the lower-cased copy (same offsets: ASCII lowering).
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let lb = lower.as_bytes();

    // `"name": "value"` (header map debug output), `name: value`, `name=value`.
    for h in SECRET_HEADERS {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(h) {
            let start = from + pos;
            from = start + h.len();
            let before_ok = start == 0 || !is_token_byte(lb[start - 1]) || lb[start - 1] == b'"';
            if !before_ok || lb.get(from).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'-') {
                continue;
            }
            let mut i = from;
            if lb.get(i) == Some(&b'"') {
                i += 1;
            }
            if !matches!(lb.get(i), Some(b':') | Some(b'=')) {
                continue;
            }
            i += 1;
            while lb.get(i) == Some(&b' ') {
                i += 1;
            }
            let quoted = lb.get(i) == Some(&b'"');
            if quoted {
                i += 1;
            }
            let end = value_end(bytes, i, quoted);
            if end > i {
                spans.push((i, end));
            }
        }
    }
    // `key=` query parameters.
    let mut from = 0;
    while let Some(pos) = lower[from..].find("key=") {
        let start = from + pos;
        from = start + 4;
        if start > 0 && !matches!(lb[start - 1], b'?' | b'&' | b' ' | b'"' | b'(') {
            continue;
        }
        let end = bytes[from..]
            .iter()
            .position(|b| {
                matches!(
                    b,
                    b'&' | b' ' | b'"' | b'\'' | b')' | b',' | b'\\' | b'\n' | b'\r' | b'\t'
                )
            })
            .map_or(bytes.len(), |p| from + p);
        if end > from {
            spans.push((from, end));
        }
    }
    // `Bearer <token>` anywhere.
    let mut from = 0;
    while let Some(pos) = lower[from..].find("bearer ") {
        let start = from + pos + 7;
        from = start;
        let end = token_end(bytes, start);
        if end > start {
            spans.push((start, end));
        }
    }
    // Secret-shaped tokens anywhere.
    for p in SECRET_PREFIXES {
        let mut from = 0;
        while let Some(pos) = line[from..].find(p) {
            let start = from + pos;
            from = start + p.len();
            if start > 0 && is_token_byte(bytes[start - 1]) {
                continue;
            }
            let end = token_end(bytes, from);
            // Long enough to be a key, not a word like `cr_` in prose.
            if end - from >= 12 {
                spans.push((from, end));
            }
        }
    }
    if spans.is_empty() {
        return Cow::Borrowed(line);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    for (s, e) in spans {
        if e <= at {
            continue;
        }
        let s = s.max(at);
        out.push_str(&line[at..s]);
        out.push_str(REDACTED);
        at = e;
    }
    out.push_str(&line[at..]);
    Cow::Owned(out)
}

/// End of a header value starting at `i`: the closing quote (escapes skipped) when quoted, else
/// the end of the line or a separator.
fn value_end(bytes: &[u8], mut i: usize, quoted: bool) -> usize {
    if quoted {
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => return i,
                _ => i += 1,
            }
        }
        return bytes.len().min(i);
    }
    while i < bytes.len() && !matches!(bytes[i], b'\r' | b'\n' | b',' | b'}' | b';') {
        i += 1;
    }
    i
}

fn token_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && is_token_byte(bytes[i]) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let key = "cr_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let line = format!(
            r#"TRACE Request header: RequestHeader {{ uri: /v1/messages?beta=true&key={key}, headers: {{"x-api-key": "{key}", "authorization": "Bearer custom-secret-value", "Api-Key": "plain", "x-other": "kept"}} }}"#
        );
        let out = redact(&line);
        assert!(!out.contains(key), "{out}");
        assert!(!out.contains("custom-secret-value"), "{out}");
        assert!(!out.contains("plain\""), "{out}");
        assert!(out.contains("\"x-other\": \"kept\""), "{out}");
        assert!(out.contains("beta=true"), "{out}");
        // An unquoted header value is redacted to the end of the line (it may hold spaces).
        let up = redact("upstream x-api-key: sk-ant-api03-AAAAAAAAAAAAAAAAAAAA-BBBB and more");
        assert_eq!(up, "upstream x-api-key: [redacted]");
        let bare = redact("sent sk-ant-api03-AAAAAAAAAAAAAAAAAAAA-BBBB upstream");
        assert_eq!(bare, "sent sk-[redacted] upstream");
        assert_eq!(redact("nothing to see here"), "nothing to see here");
        assert_eq!(redact("monkey=1 turkey: 2"), "monkey=1 turkey: 2");
        // A `key=` field ends at the end of its line: the next line stays.
        assert_eq!(
            redact("INFO x key=k_1\nINFO next line"),
            "INFO x key=[redacted]\nINFO next line"
        );
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_props::config(256))]

        /// Whatever surrounds a credential header in a log line, its value never comes out, and
        /// any line is handled without a panic.
        #[test]
        fn credential_values_never_survive(
            before in "[ -~]{0,40}",
            name in prop::sample::select(SECRET_HEADERS.to_vec()),
            upper in any::<bool>(),
            secret in "[A-Za-z0-9_.~+/=-]{12,64}",
            style in 0..4usize,
            after in "[ -~&&[^\"]]{0,40}",
        ) {
            let name = if upper { name.to_ascii_uppercase() } else { name.to_string() };
            let line = match style {
                0 => format!("{before} {{\"{name}\": \"{secret}\", \"x\": \"{after}\"}}"),
                1 => format!("{before} {name}: {secret}"),
                2 => format!("{before} {name}={secret}, {after}"),
                _ => format!("{before} GET /v1/messages?key={secret}&{after} \"{name}\": \"Bearer {secret}\""),
            };
            let out = redact(&line);
            prop_assert!(!out.contains(&secret), "{}", out);
        }

        #[test]
        fn any_line_is_redacted_without_panicking(line in any::<String>()) {
            let out = redact(&line);
            prop_assert!(out.len() <= line.len() + line.len() / 2 * REDACTED.len() + REDACTED.len());
        }
    }
}
