//! `${VAR}` expansion in configuration strings.
//!
//! Owns the substitution syntax only: `${NAME}` takes the environment variable
//! `NAME` (missing → error naming the variable and the key path),
//! `${NAME:-fallback}` uses `fallback` when `NAME` is unset or empty, and `$$`
//! is a literal `$`. Expansion runs on string values of the parsed YAML tree,
//! never on keys, so it cannot change the shape of the document.

use serde_yaml::Value;

/// Expands every string value in `value`, reporting the first failure with
/// the dotted key path of the offending value (e.g. `upstreams.vllm.credential`).
pub fn expand_tree(
    value: &mut Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                *s = expand_str(s, lookup).map_err(|e| format!("{}: {e}", join_path(path)))?;
            }
            Ok(())
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                expand_tree(item, path, lookup)?;
                path.pop();
            }
            Ok(())
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                path.push(key_name(k));
                expand_tree(v, path, lookup)?;
                path.pop();
            }
            Ok(())
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, lookup),
        _ => Ok(()),
    }
}

/// Joins path segments as `a.b[0].c`.
pub fn join_path(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if !seg.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    out
}

fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// Expands one string. Errors name the variable, never its value.
pub fn expand_str(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated `${` (expected `${NAME}`)".to_string())?;
            let expr = &body[..end];
            let (name, fallback) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{expr}}}` is not a valid variable reference (expected `${{NAME}}` with letters, digits, `_`)"
                ));
            }
            match (
                lookup(name).filter(|v| !v.is_empty() || fallback.is_none()),
                fallback,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable `{name}` is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_and_names_missing_variable() {
        assert_eq!(expand_str("Bearer ${KEY}", &env).unwrap(), "Bearer s3cret");
        assert_eq!(expand_str("a $$ b ${NOPE:-x}", &env).unwrap(), "a $ b x");
        assert_eq!(expand_str("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand_str("${EMPTY}", &env).unwrap(), "");
        assert_eq!(expand_str("price $5", &env).unwrap(), "price $5");
        let err = expand_str("Bearer ${VLLM_API_KEY}", &env).unwrap_err();
        assert!(err.contains("`VLLM_API_KEY` is not set"), "{err}");
        assert!(expand_str("${KEY", &env)
            .unwrap_err()
            .contains("unterminated"));
        assert!(expand_str("${A-B}", &env)
            .unwrap_err()
            .contains("not a valid"));
    }

    #[test]
    fn tree_errors_carry_the_key_path() {
        let mut v: Value =
            serde_yaml::from_str("upstreams:\n  vllm:\n    hosts: ['${KEY}', '${MISSING}']\n")
                .unwrap();
        let err = expand_tree(&mut v, &mut Vec::new(), &env).unwrap_err();
        assert_eq!(
            err,
            "upstreams.vllm.hosts[1]: environment variable `MISSING` is not set"
        );
    }
}
