//! The relay's log (text or JSON lines, on standard error or in a rotated file), with secrets
//! taken out of every line at every level.
//!
//! The relay's own log lines never carry credentials, but at `debug` and `trace` Pingora and the
//! HTTP libraries print whole request heads (`x-api-key`, `Authorization`, `?key=`) and the
//! upstream request with the account's key. Every formatted line therefore passes through
//! [`redact`] before it is written: values of credential headers, `key=` query parameters, bearer
//! tokens, and anything shaped like a client key (`cr_…`) or an Anthropic key (`sk-ant-…`) are
//! replaced with `[redacted]`.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;

use crate::config::{LogConfig, LogFormat, LogRotate};

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

/// Keeps the log's writer thread alive; dropping it writes what is still queued.
#[must_use = "the log's last lines are written when this guard is dropped"]
pub struct LogGuard {
    _worker: tracing_appender::non_blocking::WorkerGuard,
}

/// The filter: `RELAY_LOG`, else `RUST_LOG`, else `level`; `access=off` when the access lines are
/// switched off.
fn filter(level: &str, access: bool) -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .or_else(|_| level.parse())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match "access=off".parse() {
        Ok(off) if !access => filter.add_directive(off),
        _ => filter,
    }
}

/// Text lines on standard error, written on the calling thread: for the commands a person runs
/// at a terminal (`check-config`, `export`, ...).
pub fn init_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(filter("info", true))
        .with_writer(|| RedactingWriter {
            buf: Vec::new(),
            out: std::io::stderr(),
        })
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Installs the server's subscriber as `log:` says: text or JSON lines, on standard error or in a
/// rotated file. Lines are formatted (and redacted) where they are logged and written by a thread
/// of their own, so a slow disk or a stalled journal never holds up a request; when that thread
/// falls more than [`BUFFERED_LINES`] behind, new lines are dropped rather than waited for.
pub fn init(config: &LogConfig) -> Result<LogGuard, String> {
    let (out, guard) = match &config.file {
        None => non_blocking(std::io::stderr()),
        Some(path) => non_blocking(open_file(path, config)?),
    };
    let make = move || RedactingWriter {
        buf: Vec::new(),
        out: out.clone(),
    };
    let filter = filter(&config.level, config.access);
    match config.format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(make)
            .with_ansi(config.file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(make)
            .try_init(),
    }
    .map_err(|e| format!("cannot install the log: {e}"))?;
    Ok(LogGuard { _worker: guard })
}

/// Lines the writer thread may be behind before new ones are dropped.
pub const BUFFERED_LINES: usize = 128_000;

fn non_blocking<W: Write + Send + 'static>(
    w: W,
) -> (
    tracing_appender::non_blocking::NonBlocking,
    tracing_appender::non_blocking::WorkerGuard,
) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("relay-log")
        .finish(w)
}

/// The log file with its rotation. Its directory and the file are created (mode 0640) and opened
/// here first, so that a path the relay cannot write stops the start with a clear message.
fn open_file(path: &Path, config: &LogConfig) -> Result<Box<dyn Write + Send>, String> {
    use file_rotate::{ContentLimit, FileRotate, TimeFrequency, compression::Compression, suffix};
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |what: &str, e: std::io::Error| format!("log.file: cannot {what} {}: {e}", path.display());
    let path = std::path::absolute(path).map_err(|e| fail("resolve", e))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true).create(true).append(true).mode(0o640);
    options.open(&path).map_err(|e| fail("open", e))?;
    let compression = Compression::None;
    Ok(match config.rotate {
        LogRotate::Never => Box::new(options.open(&path).map_err(|e| fail("open", e))?),
        LogRotate::Size => Box::new(FileRotate::new(
            &path,
            suffix::AppendCount::new(config.keep),
            ContentLimit::BytesSurpassed(usize::try_from(config.max_bytes).unwrap_or(usize::MAX)),
            compression,
            Some(options),
        )),
        LogRotate::Daily => Box::new(FileRotate::new(
            &path,
            suffix::AppendTimestamp::with_format(
                "%Y%m%d",
                suffix::FileLimit::MaxFiles(config.keep),
                suffix::DateFrom::DateYesterday,
            ),
            ContentLimit::Time(TimeFrequency::Daily),
            compression,
            Some(options),
        )),
    })
}

/// Collects one formatted event and writes it, redacted, in one piece when dropped.
struct RedactingWriter<W: Write> {
    buf: Vec<u8>,
    out: W,
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let _ = self.out.write_all(redact(&text).as_bytes());
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
