//! PII masking: detectors ([`detect`], one automaton plus validators), the
//! streaming masker ([`stream`]), replacement styles ([`replace`]) and wire
//! format codecs ([`codec`]). [`MaskEngine`] builds, once at start-up, the
//! rules each policy uses for responses and, optionally, requests.

pub mod codec;
pub mod detect;
pub mod replace;
pub mod stream;
mod validate;

use crate::config::{Config, ConfigError, EntitySet, PolicyConfig};
use detect::{Detector, BUILTIN};
use replace::{Replacer, Style};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use stream::MaskRules;

/// A policy's masking: rules for responses and for requests (prompts).
#[derive(Clone, Default)]
pub struct PolicyMasking {
    pub response: Option<Arc<MaskRules>>,
    pub request: Option<Arc<MaskRules>>,
}

/// Masking rules for every policy, compiled once.
pub struct MaskEngine {
    policies: HashMap<String, PolicyMasking>,
    /// Every entity, label style: what the audit trail stores bodies with.
    audit: Arc<MaskRules>,
    /// Largest JSON response buffered for masking.
    pub max_json_body: usize,
}

impl MaskEngine {
    pub fn build(config: &Config) -> Result<MaskEngine, ConfigError> {
        let m = &config.masking;
        let custom: Vec<(String, String)> = m
            .custom
            .iter()
            .map(|c| (c.name.clone(), c.pattern.clone()))
            .collect();
        for (i, c) in custom.iter().enumerate() {
            Detector::new(&[], std::slice::from_ref(c))
                .map_err(|e| ConfigError::at(format!("masking.custom[{i}]"), e))?;
        }
        // Below the longest built-in match, a streamed entity could be
        // released before it is complete, i.e. unmasked.
        let longest = Detector::new(&BUILTIN, &[])
            .ok()
            .and_then(|d| d.max_match_len())
            .unwrap_or(0);
        if m.max_holdback_bytes < longest {
            return Err(ConfigError::at(
                "masking.max_holdback_bytes",
                format!(
                    "must be at least {longest} (the longest built-in entity, a PEM private key)"
                ),
            ));
        }
        let mut detectors: HashMap<Vec<String>, Arc<Detector>> = HashMap::new();
        let mut policies = HashMap::new();
        let default_policy = PolicyConfig::default();
        let mut names: Vec<&String> = config.policies.keys().collect();
        let default_name = "default".to_string();
        if !config.policies.contains_key("default") {
            names.push(&default_name);
        }
        // Each policy's `mask`, then each rule's `mask` override, keyed by
        // [`rule_key`].
        let mut sets: Vec<(String, &crate::config::MaskPolicy, String)> = Vec::new();
        for name in names {
            let p = config.policies.get(name).unwrap_or(&default_policy);
            sets.push((name.clone(), &p.mask, format!("policies.{name}.mask")));
            for (i, rule) in p.rules.iter().enumerate() {
                if let Some(mask) = &rule.mask {
                    let at = format!("policies.{name}.rules[{i}] ({}).mask", rule.name);
                    sets.push((rule_key(name, i), mask, at));
                }
            }
        }
        for (name, mask, at) in sets {
            let mut build = |set: &EntitySet,
                             dir: &str|
             -> Result<Option<Arc<MaskRules>>, ConfigError> {
                let wanted =
                    resolve(set, &custom).map_err(|e| ConfigError::at(format!("{at}.{dir}"), e))?;
                if wanted.is_empty() {
                    return Ok(None);
                }
                let detector = match detectors.get(&wanted) {
                    Some(d) => d.clone(),
                    None => {
                        let builtins: Vec<&str> = wanted
                            .iter()
                            .filter(|n| BUILTIN.contains(&n.as_str()))
                            .map(String::as_str)
                            .collect();
                        let chosen: Vec<(String, String)> = custom
                            .iter()
                            .filter(|(n, _)| wanted.contains(n))
                            .cloned()
                            .collect();
                        let d = Arc::new(
                            Detector::new(&builtins, &chosen)
                                .map_err(|e| ConfigError::at(format!("{at}.{dir}"), e))?,
                        );
                        detectors.insert(wanted.clone(), d.clone());
                        d
                    }
                };
                let mut styles = Vec::new();
                for n in detector.names() {
                    styles.push(*mask.styles.get(n).unwrap_or(&mask.style));
                }
                for key in mask.styles.keys() {
                    if !detector.names().contains(key) && !is_known(key, &custom) {
                        return Err(ConfigError::at(
                            format!("{at}.styles.{key}"),
                            "unknown entity",
                        ));
                    }
                }
                let hash_key = m.hash_key.as_ref().map(|k| k.0.as_bytes());
                if styles.contains(&Style::Hash) && hash_key.is_none() {
                    return Err(ConfigError::at(
                        format!("{at}.style"),
                        "`hash` needs `masking.hash_key` (a secret, e.g. \"${MODELGATE_MASK_KEY}\")",
                    ));
                }
                let replacer = Replacer::new(detector.names().to_vec(), styles, hash_key);
                Ok(Some(Arc::new(MaskRules {
                    detector,
                    replacer,
                    max_holdback: m.max_holdback_bytes,
                })))
            };
            let response = build(&mask.response, "response")?;
            let request = build(&mask.request, "request")?;
            policies.insert(name.clone(), PolicyMasking { response, request });
        }
        let all = resolve(&EntitySet::Keyword("all".into()), &custom).expect("`all` resolves");
        let audit_detector = match detectors.get(&all) {
            Some(d) => d.clone(),
            None => {
                let builtins: Vec<&str> = BUILTIN.to_vec();
                Arc::new(
                    Detector::new(&builtins, &custom)
                        .map_err(|e| ConfigError::at("masking.custom", e))?,
                )
            }
        };
        Ok(MaskEngine {
            audit: Arc::new(MaskRules::uniform(
                audit_detector,
                Style::Label,
                m.max_holdback_bytes,
            )),
            policies,
            max_json_body: m.max_json_body_bytes,
        })
    }

    /// Rules masking every entity with its label (for stored audit bodies).
    pub fn audit_rules(&self) -> Arc<MaskRules> {
        self.audit.clone()
    }

    /// The masking of policy `name` (validated to exist at config load).
    pub fn policy(&self, name: &str) -> PolicyMasking {
        self.policies.get(name).cloned().unwrap_or_default()
    }

    /// The `mask` override of rule `index` of policy `name`, if it has one.
    pub fn rule(&self, name: &str, index: usize) -> Option<PolicyMasking> {
        self.policies.get(&rule_key(name, index)).cloned()
    }
}

/// Where a rule's masking override is kept (`#` cannot start a YAML key
/// unquoted, and a policy named so would still differ by the suffix).
fn rule_key(policy: &str, index: usize) -> String {
    format!("{policy}#rule{index}")
}

fn is_known(name: &str, custom: &[(String, String)]) -> bool {
    BUILTIN.contains(&name) || custom.iter().any(|(n, _)| n == name)
}

/// The entity names a set stands for, sorted (the detector cache key).
fn resolve(set: &EntitySet, custom: &[(String, String)]) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = match set {
        EntitySet::Keyword(k) if k == "all" => BUILTIN
            .iter()
            .map(|s| s.to_string())
            .chain(custom.iter().map(|(n, _)| n.clone()))
            .collect(),
        EntitySet::Keyword(k) if k == "none" => Vec::new(),
        EntitySet::Keyword(k) => {
            return Err(format!(
                "expected `all`, `none` or a list of entities, got `{k}`"
            ))
        }
        EntitySet::List(list) => {
            for n in list {
                if !is_known(n, custom) {
                    let mut known: Vec<&str> = BUILTIN.to_vec();
                    known.extend(custom.iter().map(|(n, _)| n.as_str()));
                    return Err(format!(
                        "unknown entity `{n}` (known: {})",
                        known.join(", ")
                    ));
                }
            }
            list.clone()
        }
    };
    names.sort();
    names.dedup();
    Ok(names)
}

/// Request keys that are structure, not prompt text.
const REQUEST_STRUCTURAL: &[&str] = &[
    "model",
    "role",
    "name",
    "type",
    "id",
    "tool_call_id",
    "tool_choice",
    "stop",
    "format",
    "response_format",
    "keep_alive",
    "url",
    "detail",
    "object",
    "service_tier",
    "reasoning_effort",
    "modalities",
];

/// Masks the prompt text of a JSON request body (every string except
/// structural fields; inside tool inputs, every string). Returns the new
/// body, or `None` if it is not JSON.
pub fn mask_request_json(body: &[u8], rules: &MaskRules, counts: &mut [u32]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    mask_request_value(&mut v, rules, counts, false);
    Some(serde_json::to_vec(&v).expect("a Value serialises"))
}

fn mask_request_value(v: &mut Value, rules: &MaskRules, counts: &mut [u32], free: bool) {
    match v {
        Value::String(s) if !s.is_empty() => *s = rules.mask_all(s, counts),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| mask_request_value(i, rules, counts, free)),
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let k = k.as_str();
                if free || !REQUEST_STRUCTURAL.contains(&k) {
                    let free = free || codec::fields::FREE_FORM.contains(&k);
                    mask_request_value(child, rules, counts, free);
                }
            }
        }
        _ => {}
    }
}
