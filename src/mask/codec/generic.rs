//! Event shapes the codecs do not know by name: TGI (`token.text`),
//! llama.cpp (`content`), the OpenAI Responses API (`delta`), bare JSON
//! strings. Every non-structural string leaf is a stream keyed by its JSON
//! path, so PII split across events is still caught. A terminal event
//! (`stop`/`done: true`, a `*.done` type, a final `generated_text`...) gets
//! the held text of the streams it carries; other streams' held text goes in
//! events synthesised from the last event that carried them.

use super::fields::*;
use crate::mask::stream::MaskRules;
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Most distinct paths tracked; beyond, leaves are masked one by one.
const MAX_PATHS: usize = 64;

#[derive(Default)]
pub struct Generic {
    paths: Vec<Vec<Seg>>,
    /// Per path, the last event that carried it (shape for synthesised
    /// events); the paths of one event share one copy.
    templates: Vec<Arc<Value>>,
}

fn key(path: usize) -> StreamKey {
    StreamKey {
        choice: u64::MAX,
        field: Field::Path,
        sub: path as u64,
    }
}

/// Whether `v` ends its stream.
pub fn is_terminal(v: &Value) -> bool {
    let Value::Object(o) = v else { return false };
    let truthy = |k: &str| o.get(k) == Some(&Value::Bool(true));
    let named = |k: &str| o.get(k).is_some_and(|v| v.is_string());
    truthy("stop")
        || truthy("done")
        || named("finish_reason")
        || named("stop_reason")
        || o.get("generated_text").is_some_and(Value::is_string)
        || o.get("type").and_then(Value::as_str).is_some_and(|t| {
            t.ends_with(".done") || t.ends_with(".completed") || t.ends_with("_stop")
        })
}

impl Generic {
    /// Streams the string leaves of `v`; returns events to emit before it.
    pub fn process(
        &mut self,
        v: &mut Value,
        streams: &mut Streams,
        rules: &MaskRules,
        counts: &mut [u32],
    ) -> Vec<Value> {
        let terminal = is_terminal(v);
        let mut seen = Vec::new();
        self.walk(
            v,
            &mut Vec::new(),
            &mut seen,
            terminal,
            streams,
            rules,
            counts,
        );
        if !seen.is_empty() {
            let template = Arc::new(v.clone());
            for &p in &seen {
                self.templates[p] = template.clone();
            }
        }
        if terminal {
            self.flush(streams, rules, counts, |p| !seen.contains(&p))
        } else {
            Vec::new()
        }
    }

    /// Events carrying every stream's held text (end of the response).
    pub fn flush_all(
        &mut self,
        streams: &mut Streams,
        rules: &MaskRules,
        counts: &mut [u32],
    ) -> Vec<Value> {
        self.flush(streams, rules, counts, |_| true)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        v: &mut Value,
        path: &mut Vec<Seg>,
        seen: &mut Vec<usize>,
        terminal: bool,
        streams: &mut Streams,
        rules: &MaskRules,
        counts: &mut [u32],
    ) {
        match v {
            Value::String(s) => {
                let p = match self.paths.iter().position(|q| q == path) {
                    Some(p) => p,
                    None if self.paths.len() >= MAX_PATHS => {
                        *s = rules.mask_all(s, counts);
                        return;
                    }
                    None => {
                        self.paths.push(path.clone());
                        self.templates.push(Arc::new(Value::Null));
                        self.paths.len() - 1
                    }
                };
                let mut out = streams.push(key(p), s, rules, counts);
                if terminal {
                    for (_, rest) in streams.flush(rules, counts, |k| *k == key(p)) {
                        out.push_str(&rest);
                    }
                }
                *s = out;
                seen.push(p);
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    path.push(Seg::Index(i));
                    self.walk(item, path, seen, terminal, streams, rules, counts);
                    path.pop();
                }
            }
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if STRUCTURAL.contains(&k.as_str()) {
                        continue;
                    }
                    path.push(Seg::Key(k.clone()));
                    self.walk(child, path, seen, terminal, streams, rules, counts);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn flush(
        &mut self,
        streams: &mut Streams,
        rules: &MaskRules,
        counts: &mut [u32],
        pick: impl Fn(usize) -> bool,
    ) -> Vec<Value> {
        let left = streams.flush(rules, counts, |k| {
            k.field == Field::Path && pick(k.sub as usize)
        });
        left.into_iter()
            .map(|(k, text)| {
                let p = k.sub as usize;
                let mut ev = Value::clone(&self.templates[p]);
                // Other streamed leaves are emptied so nothing is repeated.
                for q in &self.paths {
                    if let Some(Value::String(s)) = at(&mut ev, q) {
                        s.clear();
                    }
                }
                if let Some(slot) = at(&mut ev, &self.paths[p]) {
                    *slot = Value::String(text);
                }
                ev
            })
            .collect()
    }
}

fn at<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Index(i) => v.get_mut(*i),
    })
}
