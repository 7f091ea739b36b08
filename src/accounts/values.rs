//! The typed values of account settings and of `scheduler.cooldowns`: each is parsed once, where
//! it is read (relay.yaml, an admin request body, a stored record), and kept parsed, so nothing
//! downstream parses it again. Their errors say what is wrong; the deserializer names the field.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::outbound::OutboundProxy;
use crate::providers::UpstreamBase;
use crate::types::{CooldownClass, Dur, parse_hhmm};

/// An upstream base URL as written (trimmed), with its parsed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    text: String,
    parsed: UpstreamBase,
}

impl BaseUrl {
    pub fn parse(s: &str) -> Result<BaseUrl, String> {
        let text = s.trim();
        Ok(BaseUrl {
            parsed: UpstreamBase::parse(text)?,
            text: text.to_string(),
        })
    }

    /// A base URL the relay itself names (a provider's default), known to parse.
    pub fn known(s: &'static str) -> BaseUrl {
        BaseUrl::parse(s).unwrap_or_else(|_| BaseUrl::anthropic())
    }

    /// `https://api.anthropic.com`, built without parsing.
    pub fn anthropic() -> BaseUrl {
        BaseUrl {
            text: crate::providers::anthropic::DEFAULT_API_BASE.to_string(),
            parsed: UpstreamBase {
                tls: true,
                host: "api.anthropic.com".into(),
                port: 443,
                path_prefix: String::new(),
                host_header: http::HeaderValue::from_static("api.anthropic.com"),
            },
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn upstream(&self) -> &UpstreamBase {
        &self.parsed
    }
}

impl Serialize for BaseUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for BaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BaseUrl::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// An outbound proxy URL: the text (which may carry credentials, so it is sealed in the store and
/// never shown or printed) and the parsed proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    url: String,
    parsed: OutboundProxy,
}

impl ProxyUrl {
    pub fn parse(s: &str) -> Result<ProxyUrl, String> {
        // The message never echoes the URL.
        Ok(ProxyUrl {
            parsed: OutboundProxy::parse(s)?,
            url: s.trim().to_string(),
        })
    }

    /// The URL with its credentials: only for sealing.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn proxy(&self) -> &OutboundProxy {
        &self.parsed
    }

    /// `socks5://***@host:1080`.
    pub fn masked(&self) -> String {
        self.parsed.to_string()
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.parsed, f)
    }
}

impl<'de> Deserialize<'de> for ProxyUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ProxyUrl::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A time of day, `HH:MM` UTC, as minutes after midnight. Written back as two-digit `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeOfDay(u32);

impl TimeOfDay {
    pub fn parse(s: &str) -> Result<TimeOfDay, String> {
        parse_hhmm(s).map(TimeOfDay)
    }

    pub fn minute(self) -> u32 {
        self.0
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TimeOfDay::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// An AWS region (`us-east-1`), with the Bedrock endpoint it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    name: String,
    endpoint: BaseUrl,
}

impl Region {
    pub fn parse(s: &str) -> Result<Region, String> {
        let name = s.trim();
        crate::providers::bedrock::valid_region(name)?;
        Ok(Region {
            endpoint: BaseUrl::parse(&crate::providers::bedrock::default_base_url(name))?,
            name: name.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// `https://bedrock-runtime.{region}.amazonaws.com`.
    pub fn endpoint(&self) -> &BaseUrl {
        &self.endpoint
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Region::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// An error class as a map key: `"529"` (or `529` in YAML), `"5xx"`, `"connect"`...
impl Serialize for CooldownClass {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

impl<'de> Deserialize<'de> for CooldownClass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl Visitor<'_> for Key {
            type Value = CooldownClass;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error class such as \"529\", \"5xx\" or \"connect\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CooldownClass, E> {
                CooldownClass::parse_key(v.trim()).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CooldownClass, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CooldownClass, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Key)
    }
}

/// Longest cooldown accepted, so that no value overflows a duration.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A cooldown: `"10m"`, `"90s"`, or a bare number of seconds; at most [`MAX_COOLDOWN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cooldown(pub Duration);

impl Cooldown {
    pub fn parse(text: &str) -> Result<Cooldown, String> {
        let text = text.trim();
        let too_long = || format!("`{text}` is longer than {} days", MAX_COOLDOWN.as_secs() / 86_400);
        // Refused before `Dur::parse` too, whose own bound is a little higher.
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        if text[..split]
            .parse::<f64>()
            .is_ok_and(|n| n > MAX_COOLDOWN.as_secs_f64())
        {
            return Err(too_long());
        }
        let d = Dur::parse(text)?.0;
        if d > MAX_COOLDOWN {
            return Err(too_long());
        }
        Ok(Cooldown(d))
    }
}

impl Serialize for Cooldown {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Cooldown {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a duration such as \"10m\" or a number of seconds")]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(n) => Cooldown::parse(&n.to_string()),
            Raw::Text(t) => Cooldown::parse(&t),
        }
        .map_err(de::Error::custom)
    }
}

/// Cooldowns by error class (`scheduler.cooldowns`, an account's overrides). Written as a map
/// ordered by class key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cooldowns(HashMap<CooldownClass, Duration>);

impl Cooldowns {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, class: CooldownClass) -> Option<Duration> {
        self.0.get(&class).copied()
    }

    /// The overrides as the scheduler keeps them.
    pub fn to_map(&self) -> HashMap<CooldownClass, Duration> {
        self.0.clone()
    }

    /// By class key (`"401"` < `"5xx"` < `"connect"`).
    pub fn iter(&self) -> impl Iterator<Item = (CooldownClass, Duration)> + '_ {
        let mut v: Vec<_> = self.0.iter().map(|(c, d)| (*c, *d)).collect();
        v.sort_by_key(|(c, _)| c.key());
        v.into_iter()
    }
}

impl FromIterator<(CooldownClass, Duration)> for Cooldowns {
    fn from_iter<I: IntoIterator<Item = (CooldownClass, Duration)>>(iter: I) -> Self {
        Cooldowns(iter.into_iter().collect())
    }
}

impl Serialize for Cooldowns {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (c, d) in self.iter() {
            m.serialize_entry(c.key(), &Cooldown(d))?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Cooldowns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Cooldowns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of error class to duration")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cooldowns, A::Error> {
                let mut out = HashMap::new();
                while let Some((class, Cooldown(d))) = map.next_entry::<CooldownClass, Cooldown>()? {
                    out.insert(class, d);
                }
                Ok(Cooldowns(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// A duration in the shortest exact form `Dur::parse` reads back (`10m`, `90s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0 => "0s".to_string(),
        s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A name-like text (account or key name, group, binding): 1 to [`MAX_NAME_CHARS`] characters, no
/// control characters. Callers trim first.
pub fn check_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

pub const MAX_NAME_CHARS: usize = 100;

/// Deserializes a string with surrounding white space removed.
pub fn trimmed<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|s| s.trim().to_string())
}

/// [`trimmed`], for an optional string.
pub fn trimmed_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(|s| s.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anthropic_default_is_what_parsing_gives() {
        assert_eq!(
            BaseUrl::anthropic(),
            BaseUrl::parse(crate::providers::anthropic::DEFAULT_API_BASE).unwrap()
        );
        let b = BaseUrl::parse(" http://127.0.0.1:9/p/ ").unwrap();
        assert_eq!(b.as_str(), "http://127.0.0.1:9/p/");
        assert_eq!(b.upstream().path_prefix, "/p");
        assert!(BaseUrl::parse("ftp://x").is_err());
    }

    #[test]
    fn times_of_day_are_written_in_two_digits() {
        let t: TimeOfDay = serde_json::from_str("\"7:5\"").unwrap();
        assert_eq!((t.minute(), t.to_string()), (425, "07:05".to_string()));
        assert!(serde_json::from_str::<TimeOfDay>("\"24:00\"").is_err());
        assert!(serde_json::from_str::<TimeOfDay>("\"noon\"").is_err());
    }

    #[test]
    fn cooldowns_read_text_or_seconds_and_write_text() {
        let c: Cooldowns = serde_json::from_str(r#"{" 529 ": " 10m ", "connect": 45}"#).unwrap();
        assert_eq!(c.get(CooldownClass::Overloaded), Some(Duration::from_secs(600)));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"529":"10m","connect":"45s"}"#);
        let y: Cooldowns = serde_yaml_ng::from_str("{ 503: 1m, 429_max: 30m }").unwrap();
        assert_eq!(y.get(CooldownClass::Unavailable), Some(Duration::from_secs(60)));
        for bad in [
            r#"{"999": "1m"}"#,
            r#"{"529": "soon"}"#,
            r#"{"529": "10y"}"#,
            r#"{"529": "-5m"}"#,
            r#"{"529": "99999999999999999999999d"}"#,
            r#"{"529": "3651d"}"#,
            r#"{"529": 18446744073709551615}"#,
            r#"{"529": true}"#,
            r#"["529"]"#,
        ] {
            assert!(serde_json::from_str::<Cooldowns>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_format_back_to_what_they_parse_from() {
        for s in ["10m", "90s", "250ms", "2h", "1d", "0s", "61s"] {
            let d = Dur::parse(s).unwrap().0;
            assert_eq!(format_duration(d), s);
        }
    }

    #[test]
    fn proxies_never_show_their_credentials() {
        let p: ProxyUrl = serde_json::from_str("\" socks5://u:secretpw@127.0.0.1:1080 \"").unwrap();
        assert_eq!(p.url(), "socks5://u:secretpw@127.0.0.1:1080");
        assert_eq!(p.masked(), "socks5://***@127.0.0.1:1080");
        assert!(!format!("{p:?}").contains("secretpw"));
        let e = serde_json::from_str::<ProxyUrl>("\"ftp://u:secretpw@h:1\"").unwrap_err();
        assert!(!e.to_string().contains("secretpw"), "{e}");
    }

    #[test]
    fn regions_imply_their_endpoint() {
        let r = Region::parse(" eu-west-1 ").unwrap();
        assert_eq!(r.as_str(), "eu-west-1");
        assert_eq!(r.endpoint().as_str(), "https://bedrock-runtime.eu-west-1.amazonaws.com");
        assert!(Region::parse("Nowhere").is_err());
    }
}
