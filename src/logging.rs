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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;

/// `log`: how the relay's own log is written. Standard error in text by default; `json` writes one
/// object per line; with `file` the log goes to that file and is rotated daily or by size, keeping
/// `keep` old files. `access` adds one line per relayed request (target `access`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// The log file; standard error when absent.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// When the file is rotated (only with `file`).
    #[serde(default)]
    pub rotate: LogRotate,
    /// The size at which `rotate: size` starts a new file.
    #[serde(default = "default_log_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept beside the current one (the oldest are deleted).
    #[serde(default = "default_log_keep")]
    pub keep: usize,
    /// One line per relayed request: request id, key name, account, model, status, latency.
    #[serde(default = "default_access")]
    pub access: bool,
    /// The level filter (`info`, `warn,claude_relay=debug`, ...) when neither `RELAY_LOG` nor
    /// `RUST_LOG` is set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            file: None,
            rotate: LogRotate::default(),
            max_bytes: default_log_max_bytes(),
            keep: default_log_keep(),
            access: true,
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotate {
    /// A new file each day (UTC); the old one is named `<file>.<YYYYMMDD>`.
    #[default]
    Daily,
    /// A new file when the current one passes `max_bytes`; old ones are `<file>.1`, `<file>.2`, ...
    Size,
    /// Never rotated by the relay (for an outside `logrotate` with `copytruncate`).
    Never,
}

fn default_log_max_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_log_keep() -> usize {
    7
}

fn default_log_level() -> String {
    "info".into()
}

fn default_access() -> bool {
    true
}

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

/// Keeps the log's writer thread alive; dropping it writes what is still buffered.
#[must_use = "the log's last lines are written when this guard is dropped"]
pub struct LogGuard {
    buffer: Arc<LogBuffer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.buffer.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
        .with_writer(|| RedactingWriter(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Installs the server's subscriber as `log:` says: text or JSON lines, on standard error or in a
/// rotated file. A line is formatted and redacted where it is logged and appended to a shared
/// buffer; a thread of its own writes the buffer out (see [`Buffered`] for when), so an access
/// line costs a request no system call, and a slow disk or a stalled journal never holds one up.
/// Past [`MAX_BUFFERED`] bytes waiting, new lines are dropped (and counted in the log).
pub fn init(config: &LogConfig) -> Result<LogGuard, String> {
    let out: Box<dyn Write + Send> = match &config.file {
        None => Box::new(std::io::stderr()),
        Some(path) => open_file(path, config)?,
    };
    let buffer = Arc::new(LogBuffer::default());
    let thread = {
        let buffer = buffer.clone();
        std::thread::Builder::new()
            .name("relay-log".into())
            .spawn(move || buffer.write_out(out))
            .map_err(|e| format!("cannot start the log's thread: {e}"))?
    };
    let make = Buffered(buffer.clone());
    let _ = ACCESS.set(AccessLog {
        buffer: buffer.clone(),
        json: config.format == LogFormat::Json,
    });
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
    Ok(LogGuard {
        buffer,
        thread: Some(thread),
    })
}

/// How often the log's thread writes out what was logged.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes that may wait for the log's thread before new lines are dropped.
pub const MAX_BUFFERED: usize = 32 * 1024 * 1024;

/// Lines logged and not yet written.
#[derive(Default)]
struct LogBuffer {
    state: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Lines dropped because the buffer was full, reported with the next write.
    dropped: u64,
    urgent: bool,
    closed: bool,
}

impl LogBuffer {
    fn push(&self, line: &[u8], urgent: bool) {
        let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if p.bytes.len() + line.len() > MAX_BUFFERED {
            p.dropped += 1;
            return;
        }
        p.bytes.extend_from_slice(line);
        if urgent && !p.urgent {
            p.urgent = true;
            drop(p);
            self.wake.notify_one();
        }
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.wake.notify_one();
    }

    /// The log's thread: every [`FLUSH_EVERY`] (or when woken), writes what is buffered in one
    /// piece; returns once closed and written out.
    fn write_out(&self, mut out: Box<dyn Write + Send>) {
        let mut spare = Vec::new();
        loop {
            let (dropped, closed) = {
                let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if !p.closed && !p.urgent {
                    p = self
                        .wake
                        .wait_timeout(p, FLUSH_EVERY)
                        .map(|(p, _)| p)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                std::mem::swap(&mut p.bytes, &mut spare);
                p.urgent = false;
                (std::mem::take(&mut p.dropped), p.closed)
            };
            if dropped > 0 {
                let note = format!("claude-relay: the log fell behind; {dropped} lines were dropped\n");
                let _ = out.write_all(note.as_bytes());
            }
            if !spare.is_empty() {
                let _ = out.write_all(&spare).and_then(|()| out.flush());
                spare.clear();
                // A burst's buffer is not kept for good.
                spare.shrink_to(1024 * 1024);
            }
            if closed {
                let mut p = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if p.bytes.is_empty() {
                    return;
                }
                std::mem::swap(&mut p.bytes, &mut spare);
                drop(p);
                let _ = out.write_all(&spare).and_then(|()| out.flush());
                return;
            }
        }
    }
}

/// The target of the access lines.
pub const ACCESS_TARGET: &str = "access";

/// Where the access lines go: written here directly, in the log's format, rather than through the
/// subscriber's formatter (which costs several microseconds a line). Set by [`init`].
static ACCESS: OnceLock<AccessLog> = OnceLock::new();

pub struct AccessLog {
    buffer: Arc<LogBuffer>,
    json: bool,
}

/// A field of an access line.
pub enum Field<'a> {
    Str(&'a str),
    U64(u64),
    F64(f64),
    Bool(bool),
}

/// The access log when the server's log is installed and the filter lets `access` lines through
/// (`log.access`, `RELAY_LOG=...,access=off`).
pub fn access_log() -> Option<&'static AccessLog> {
    let log = ACCESS.get()?;
    tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO).then_some(log)
}

impl AccessLog {
    /// Writes one access line with `message` and `fields` (absent ones left out), shaped like the
    /// subscriber's lines (JSON with the fields flattened, or text), redacted like every line.
    pub fn write(&self, message: &str, fields: &[(&str, Option<Field<'_>>)]) {
        use std::fmt::Write as _;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut line = String::with_capacity(640);
        if self.json {
            let _ = write!(line, "{{\"timestamp\":\"{now}\",\"level\":\"INFO\",\"message\":");
            json_str(&mut line, message);
            for (name, value) in fields {
                let Some(value) = value else { continue };
                let _ = write!(line, ",\"{name}\":");
                match value {
                    Field::Str(v) => json_str(&mut line, v),
                    Field::U64(v) => {
                        let _ = write!(line, "{v}");
                    }
                    Field::F64(v) if v.is_finite() => {
                        let _ = write!(line, "{v}");
                    }
                    Field::F64(_) => line.push_str("null"),
                    Field::Bool(v) => {
                        let _ = write!(line, "{v}");
                    }
                }
            }
            let _ = writeln!(line, ",\"target\":\"{ACCESS_TARGET}\"}}");
        } else {
            let _ = write!(line, "{now}  INFO {ACCESS_TARGET}: {message}");
            for (name, value) in fields {
                let Some(value) = value else { continue };
                let _ = match value {
                    Field::Str(v) => write!(line, " {name}={v:?}"),
                    Field::U64(v) => write!(line, " {name}={v}"),
                    Field::F64(v) => write!(line, " {name}={v}"),
                    Field::Bool(v) => write!(line, " {name}={v}"),
                };
            }
            line.push('\n');
        }
        self.buffer.push(redact(&line).as_bytes(), false);
    }
}

/// `v` as a JSON string.
fn json_str(out: &mut String, v: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The subscriber's writer factory. The relay's own lines up to `info` wake the log's thread at
/// once (they are few: starts, stops, accounts changing health); the access lines and the
/// `debug` and `trace` chatter wait for the next [`FLUSH_EVERY`].
struct Buffered(Arc<LogBuffer>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffered {
    type Writer = RedactingWriter<BufferedLine<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(BufferedLine {
            buffer: &self.0,
            urgent: false,
        })
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter(BufferedLine {
            buffer: &self.0,
            urgent: *meta.level() <= tracing::Level::INFO && meta.target() != ACCESS_TARGET,
        })
    }
}

struct BufferedLine<'a> {
    buffer: &'a LogBuffer,
    urgent: bool,
}

impl Write for BufferedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.push(buf, self.urgent);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

/// Writes each formatted event redacted. The formatter hands over a whole event in one `write`
/// (it formats into a buffer of its own first), so a secret is never split between two calls.
struct RedactingWriter<W: Write>(W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=' | b'%')
}

/// The line with every secret it shows replaced by `[redacted]`.
pub fn redact(line: &str) -> Cow<'_, str> {
    // Cheap check first, one pass without a copy: most lines mention nothing secret-shaped.
    static SUSPICIOUS: LazyLock<Option<aho_corasick::AhoCorasick>> = LazyLock::new(|| {
        let words = SECRET_HEADERS.iter().chain(&["key=", "bearer"]).chain(&SECRET_PREFIXES);
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(words)
            .ok()
    });
    if SUSPICIOUS.as_ref().is_some_and(|ac| !ac.is_match(line)) {
        return Cow::Borrowed(line);
    }
    let lower = line.to_ascii_lowercase();
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

    /// Access lines are JSON objects (or text lines) whatever their values hold, and redacted.
    #[test]
    fn access_lines_are_well_formed_and_redacted() {
        use super::Field::{Bool, F64, Str, U64};
        let buffer = Arc::new(LogBuffer::default());
        let key = "cr_0123456789abcdef0123456789abcdef";
        let fields = [
            ("model", Some(Str("a\"b\\c\nd\u{1}é"))),
            ("absent", None),
            ("status", Some(U64(200))),
            ("cost_usd", Some(F64(0.25))),
            ("nan", Some(F64(f64::NAN))),
            ("stream", Some(Bool(true))),
            ("key_name", Some(Str(key))),
        ];
        AccessLog {
            buffer: buffer.clone(),
            json: true,
        }
        .write("request", &fields);
        AccessLog {
            buffer: buffer.clone(),
            json: false,
        }
        .write("request", &fields);
        let text = String::from_utf8(std::mem::take(&mut buffer.state.lock().unwrap().bytes)).unwrap();
        let mut lines = text.lines();
        let json: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(json["model"], "a\"b\\c\nd\u{1}é");
        assert_eq!(
            (json["status"].as_u64(), json["cost_usd"].as_f64()),
            (Some(200), Some(0.25))
        );
        assert!(json["nan"].is_null() && json.get("absent").is_none() && json["stream"] == true);
        assert_eq!(
            (json["target"].as_str(), json["message"].as_str()),
            (Some("access"), Some("request"))
        );
        let line = lines.next().unwrap();
        assert!(
            line.contains("  INFO access: request model=") && line.contains(" status=200"),
            "{line}"
        );
        assert!(!text.contains(key), "{text}");
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
