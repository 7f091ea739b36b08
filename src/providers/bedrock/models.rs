//! Anthropic model names → Bedrock model ids.
//!
//! Built from the Bedrock entries of the price table (`anthropic.claude-…`, and the
//! `us.`/`eu.`/`apac.`/`global.`… inference profiles), so a table update brings new models. The
//! bare id is found by the client's name (dated or undated); the account's inference profile
//! prefix is put in front of it.

use std::collections::HashMap;

/// A cross-region inference profile: the prefix of a Bedrock model id. Written as `none` or
/// the prefix in the config and the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Profile {
    /// The bare regional id (`anthropic.claude-…`).
    None,
    /// `us`, `eu`, `apac`, `jp`, `au`, `us-gov` or `global`.
    Prefix(String),
}

impl TryFrom<String> for Profile {
    type Error = String;
    fn try_from(s: String) -> Result<Profile, String> {
        Profile::parse(&s)
    }
}

impl From<Profile> for String {
    fn from(p: Profile) -> String {
        match p {
            Profile::None => "none".into(),
            Profile::Prefix(p) => p,
        }
    }
}

/// The profile prefixes Bedrock defines for Anthropic models.
pub const PROFILES: [&str; 7] = ["us", "eu", "apac", "jp", "au", "us-gov", "global"];

impl Profile {
    /// `none` or one of [`PROFILES`].
    pub fn parse(s: &str) -> Result<Profile, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "none" {
            return Ok(Profile::None);
        }
        if PROFILES.contains(&s.as_str()) {
            return Ok(Profile::Prefix(s));
        }
        Err(format!(
            "`{s}` is not an inference profile (use none, {})",
            PROFILES.join(", ")
        ))
    }

    /// The profile a region's accounts use unless told otherwise: the geography's own profile
    /// (requests stay in that geography), `global` where Bedrock has none.
    pub fn default_for_region(region: &str) -> Profile {
        let r = region.to_ascii_lowercase();
        let p = if r.starts_with("us-gov-") {
            "us-gov"
        } else if r.starts_with("us-") || r.starts_with("ca-") {
            "us"
        } else if r.starts_with("eu-") {
            "eu"
        } else if r == "ap-northeast-1" || r == "ap-northeast-3" {
            "jp"
        } else if r == "ap-southeast-2" || r == "ap-southeast-4" {
            "au"
        } else if r.starts_with("ap-") {
            "apac"
        } else {
            "global"
        };
        Profile::Prefix(p.to_string())
    }
}

/// Anthropic model names → bare Bedrock ids (`anthropic.claude-sonnet-4-5-20250929-v1:0`).
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    by_name: HashMap<String, String>,
}

impl Catalog {
    /// Reads the Bedrock ids among `names` (a price table's model names).
    pub fn from_names<'a>(names: impl Iterator<Item = &'a str>) -> Catalog {
        // name → (bare id, date) so that an undated name points at its newest dated model.
        let mut dated: HashMap<String, (String, String)> = HashMap::new();
        let mut exact: HashMap<String, String> = HashMap::new();
        for n in names {
            let n = n.trim().to_ascii_lowercase();
            if n.contains(['/', '@']) {
                continue;
            }
            let Some(pos) = n.find("anthropic.") else { continue };
            let prefix = &n[..pos];
            if !(prefix.is_empty() || PROFILES.iter().any(|p| prefix == format!("{p}."))) {
                continue;
            }
            let bare = n[pos..].to_string();
            let name = strip_version(&bare["anthropic.".len()..]).to_string();
            if !name.starts_with("claude") {
                continue;
            }
            // A bare entry wins over one only known through a profile.
            if prefix.is_empty() || !exact.contains_key(&name) {
                exact.insert(name.clone(), bare.clone());
            }
            if let Some((base, date)) = split_date(&name) {
                let e = dated
                    .entry(base.to_string())
                    .or_insert_with(|| (bare.clone(), date.to_string()));
                if date > e.1.as_str() {
                    *e = (bare.clone(), date.to_string());
                }
            }
        }
        let mut by_name = exact;
        for (base, (bare, _)) in dated {
            by_name.entry(base).or_insert(bare);
        }
        Catalog { by_name }
    }

    /// The Bedrock model id for `model` on an account with `profile`. A name that already is a
    /// Bedrock id (or an ARN) is used as given, and so is a name the catalog does not know.
    pub fn resolve(&self, model: &str, profile: &Profile) -> String {
        let m = model.trim();
        if m.starts_with("arn:") || m.contains("anthropic.") {
            return m.to_string();
        }
        let key = m.to_ascii_lowercase();
        let bare = self.by_name.get(&key).or_else(|| {
            let (base, _) = split_date(&key)?;
            self.by_name.get(base)
        });
        match (bare, profile) {
            (Some(b), Profile::None) => b.clone(),
            (Some(b), Profile::Prefix(p)) => format!("{p}.{b}"),
            (None, _) => m.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// `claude-sonnet-4-5-20250929-v1:0` → `claude-sonnet-4-5-20250929`; `claude-opus-4-6-v1` →
/// `claude-opus-4-6`.
fn strip_version(s: &str) -> &str {
    let Some(pos) = s.rfind("-v") else { return s };
    let rest = &s[pos + 2..];
    let mut parts = rest.split(':');
    let ok = parts
        .next()
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok { &s[..pos] } else { s }
}

/// `claude-sonnet-4-5-20250929` → (`claude-sonnet-4-5`, `20250929`).
fn split_date(s: &str) -> Option<(&str, &str)> {
    let (base, tail) = s.rsplit_once('-')?;
    (tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_digit())).then_some((base, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let names = [
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "anthropic.claude-sonnet-4-20250514-v1:0",
            "anthropic.claude-opus-4-6-v1",
            "anthropic.claude-opus-4-8",
            "anthropic.claude-haiku-4-5-20251001-v1:0",
            "anthropic.claude-haiku-4-5@20251001",
            "us.anthropic.claude-mythos-5",
            "bedrock/us-east-1/anthropic.claude-v1",
            "claude-sonnet-4-5",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
        ];
        Catalog::from_names(names.into_iter())
    }

    #[test]
    fn names_map_to_bare_ids_with_the_profile_in_front() {
        let c = catalog();
        let us = Profile::Prefix("us".into());
        assert_eq!(
            c.resolve("claude-sonnet-4-5", &us),
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
        );
        assert_eq!(
            c.resolve("claude-sonnet-4-5-20250929", &Profile::None),
            "anthropic.claude-sonnet-4-5-20250929-v1:0"
        );
        assert_eq!(c.resolve("claude-opus-4-8", &us), "us.anthropic.claude-opus-4-8");
        assert_eq!(c.resolve("claude-opus-4-6", &us), "us.anthropic.claude-opus-4-6-v1");
        assert_eq!(
            c.resolve("claude-haiku-4-5", &Profile::Prefix("eu".into())),
            "eu.anthropic.claude-haiku-4-5-20251001-v1:0"
        );
        // Only known through a profile entry.
        assert_eq!(c.resolve("claude-mythos-5", &us), "us.anthropic.claude-mythos-5");
        // The newest dated model for an undated name.
        assert_eq!(
            c.resolve("claude-3-5-sonnet", &Profile::None),
            "anthropic.claude-3-5-sonnet-20241022-v2:0"
        );
        // Bedrock ids and unknown names pass as given.
        assert_eq!(
            c.resolve("eu.anthropic.claude-x-v1:0", &us),
            "eu.anthropic.claude-x-v1:0"
        );
        assert_eq!(c.resolve("my-custom-model", &us), "my-custom-model");
    }

    #[test]
    fn the_built_in_table_knows_current_models() {
        let table = crate::usage::pricing::PricingTable::builtin().unwrap();
        let c = Catalog::from_names(table.model_names());
        let us = Profile::Prefix("us".into());
        assert_eq!(c.resolve("claude-opus-4-8", &us), "us.anthropic.claude-opus-4-8");
        assert_eq!(
            c.resolve("claude-sonnet-4-5-20250929", &us),
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
        );
        assert_eq!(
            c.resolve("claude-haiku-4-5", &Profile::Prefix("global".into())),
            "global.anthropic.claude-haiku-4-5-20251001-v1:0"
        );
    }

    #[test]
    fn profiles_by_region() {
        let p = |r| match Profile::default_for_region(r) {
            Profile::Prefix(p) => p,
            Profile::None => "none".into(),
        };
        assert_eq!(p("us-east-1"), "us");
        assert_eq!(p("us-gov-west-1"), "us-gov");
        assert_eq!(p("eu-central-1"), "eu");
        assert_eq!(p("ap-northeast-1"), "jp");
        assert_eq!(p("ap-southeast-2"), "au");
        assert_eq!(p("ap-south-1"), "apac");
        assert_eq!(p("me-central-1"), "global");
        assert_eq!(Profile::parse("None").unwrap(), Profile::None);
        assert!(Profile::parse("mars").is_err());
    }
}
