//! What a request body asks for, as the policy's conditions read it
//! ([`Features`]: streaming, tools, `max_tokens`, the prompt text), read as
//! lenient model servers read a body: keys in any ASCII case, counts and
//! flags as numbers or strings.
//!
//! Not here: which conditions a rule has and how they combine
//! (`super::rules`), the injection screen (`super::screen`).

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// The prompt text of a request body, as rules read it (every string a
/// model may read, joined by newlines).
pub fn prompt_text(body: &[u8]) -> String {
    Features::of(body).prompt
}

/// What the body asks for, as the conditions read it.
#[derive(Debug, Default, PartialEq)]
pub struct Features {
    /// The body is a JSON object (the fields below are read from it).
    pub json: bool,
    pub stream: bool,
    pub tools: bool,
    pub max_tokens: Option<u64>,
    /// Every string in the body a model may read (everything but known
    /// structural keys such as `role`, `type`, `model`, `id`, `url`),
    /// joined by newlines. A body that is not JSON is its own prompt text.
    pub prompt: String,
}

/// Keys whose string values are structure, not text for the model. Keys
/// are compared ASCII case-insensitively, as Go's `encoding/json` (Ollama)
/// matches fields.
const STRUCTURAL_KEYS: &[&str] = &[
    "role",
    "type",
    "model",
    "id",
    "object",
    "url",
    "media_type",
    "detail",
    "format",
    "tool_call_id",
    "finish_reason",
    "encoding_format",
    "response_format",
    "service_tier",
    "reasoning_effort",
    "tool_choice",
    "keep_alive",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "num_predict",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "n",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "user",
];

impl Features {
    /// What `body` asks for, in one pass that allocates only the prompt
    /// text ([`read`]). A body that is not a JSON object is not JSON to the
    /// rules (`json: false`, its prompt text the body itself), and neither
    /// is one that model servers could read otherwise than the rules do: a
    /// key given twice (as Go matches names: [`go_name`], any ASCII case)
    /// in an object the rules read
    /// (Python keeps the last, Go's `encoding/json` merges objects and
    /// matches fields in any case), or serde_json's reserved raw-value key
    /// anywhere (a `Value` replaces the object holding it with the JSON in
    /// its string, which the model server would not).
    pub fn of(body: &[u8]) -> Features {
        read(body, false)
            .map(|(f, _)| f)
            .unwrap_or_else(|| not_json(body))
    }

    /// [`Features::of`] and the body's `model` in the same pass, for a
    /// gateway that reads both (routing needs the model, the policy the
    /// features): the `model` is read as the gateway's probe reads it, the
    /// exact key's value, a string or `null`. `None` when the body is not
    /// JSON to the rules, or its `model` is something else: the caller then
    /// reads the two separately, and gets what it always got.
    pub fn with_model(body: &[u8]) -> Option<(Features, Option<String>)> {
        read(body, true).map(|(f, m)| (f, m.map(Cow::into_owned)))
    }

    /// The body as a [`Value`] read for these fields: how every body was
    /// read before [`read`]. Not used by the gateway; kept as the test
    /// oracle (for the bodies [`read`] takes, the two agree) and the
    /// bench's comparison.
    pub fn of_value(body: &[u8]) -> Features {
        let v = serde_json::from_slice::<Value>(body).ok();
        let Some(obj) = v.as_ref().and_then(Value::as_object) else {
            return not_json(body);
        };
        // Keys as Go matches field names (`go_name`, then any ASCII case).
        let get = |k: &'static str| {
            obj.iter()
                .filter(move |(key, _)| go_name(Cow::Borrowed(key)).eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        };
        let non_empty = |k| get(k).any(|v| v.as_array().is_some_and(|a| !a.is_empty()));
        let num_predict = get("options")
            .filter_map(Value::as_object)
            .flat_map(|o| o.iter())
            .filter(|(k, _)| go_name(Cow::Borrowed(k)).eq_ignore_ascii_case("num_predict"))
            .map(|(_, v)| v);
        let max_tokens = get("max_tokens")
            .chain(get("max_completion_tokens"))
            .chain(get("max_output_tokens"))
            .chain(num_predict)
            .filter_map(lax_u64)
            .max();
        let mut prompt = String::new();
        collect_prompt(v.as_ref().expect("an object"), &mut prompt);
        Features {
            json: true,
            stream: get("stream").any(lax_true),
            tools: non_empty("tools") || non_empty("functions"),
            max_tokens,
            prompt,
        }
    }
}

/// What a body that is not JSON to the rules reads as.
fn not_json(body: &[u8]) -> Features {
    Features {
        prompt: String::from_utf8_lossy(body).into_owned(),
        ..Default::default()
    }
}

/// A count as lenient servers (pydantic's lax mode) read it: `4000`,
/// `4000.0`, `"4000"`.
fn lax_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().and_then(non_negative)),
        Value::String(s) => lax_u64_str(s),
        _ => None,
    }
}

fn lax_u64_str(s: &str) -> Option<u64> {
    s.trim().parse::<f64>().ok().and_then(non_negative)
}

fn non_negative(f: f64) -> Option<u64> {
    (f.is_finite() && f >= 0.0).then(|| f.ceil() as u64)
}

/// A flag as lenient servers read it: `true`, `1`, `"true"`, `"1"`, `"yes"`.
fn lax_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => lax_true_str(s),
        _ => false,
    }
}

fn lax_true_str(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on"
    )
}

/// Appends every text string in `v` to `out`, skipping structural keys.
fn collect_prompt(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
        Value::Array(items) => {
            for item in items {
                collect_prompt(item, out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                if !is_structural(&go_name(Cow::Borrowed(k))) {
                    collect_prompt(item, out);
                }
            }
        }
        _ => {}
    }
}

/// Keys of one object compared one by one for the repeat check; past this
/// many, the object's keys go into a set.
const LISTED_KEYS: usize = 16;

/// The key serde_json reserves for its `RawValue` (with the `raw_value`
/// feature, which this crate uses): a `Value` parse takes an object whose
/// first key it is for the JSON text in its string value.
const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

/// `key` as Go's `encoding/json` (Ollama) matches it with a field name,
/// short of ASCII case (compared with `eq_ignore_ascii_case`): Go folds
/// case the Unicode way, and two non-ASCII letters fold onto ASCII ones,
/// `ſ` (U+017F) onto `s` and the Kelvin sign (U+212A) onto `k`; so
/// `"ſtream"` is Ollama's `stream`. Every key is read through this.
fn go_name(key: Cow<'_, str>) -> Cow<'_, str> {
    const ONTO_ASCII: [char; 2] = ['\u{17F}', '\u{212A}'];
    if key.is_ascii() || !key.contains(ONTO_ASCII) {
        return key;
    }
    let folded = key.chars().map(|c| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c,
    });
    Cow::Owned(folded.collect())
}

/// Whether `key` (through [`go_name`]) is structural.
fn is_structural(key: &str) -> bool {
    STRUCTURAL_KEYS.iter().any(|s| key.eq_ignore_ascii_case(s))
}

/// The body's features without building a [`Value`]: the body is walked
/// once, strings that count are appended to the prompt as they are met,
/// and the fields the conditions read are read where they stand. `None`
/// when the body is not JSON to the rules (see [`Features::of`]).
///
/// Every value goes through `deserialize_any`, as a [`Value`]'s do, so the
/// same bodies are invalid: bad UTF-8 and lone surrogates (even where no
/// text is read: `IgnoredAny` would let them by), too deep, trailing data.
///
/// With `model`, the top-level `model` (the exact key, not matched as Go
/// matches names) is read as a string or `null` and returned; any other
/// value fails the read.
fn read(body: &[u8], model: bool) -> Option<(Features, Option<Cow<'_, str>>)> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut reader = Reader {
        // Never outgrown: the text is shorter than the strings' source.
        prompt: String::with_capacity(body.len()),
        keys: Vec::new(),
        max_tokens: None,
        stream: false,
        tools: false,
        model: model.then_some(None),
    };
    de.deserialize_any(Top(&mut reader)).ok()?;
    de.end().ok()?;
    let features = Features {
        json: true,
        stream: reader.stream,
        tools: reader.tools,
        max_tokens: reader.max_tokens,
        prompt: reader.prompt,
    };
    Some((features, reader.model.flatten()))
}

/// The state of one [`read`] pass.
struct Reader<'de> {
    prompt: String,
    /// The keys of the objects open on the way down, for the repeat
    /// check; each object's start where its visit began.
    keys: Vec<Cow<'de, str>>,
    max_tokens: Option<u64>,
    stream: bool,
    tools: bool,
    /// `Some` when the top-level `model` is wanted; then `Some(Some(..))`
    /// once a string `model` is read.
    model: Option<Option<Cow<'de, str>>>,
}

impl<'de> Reader<'de> {
    /// Takes `key` as the next of the object `seen`, or refuses it: given
    /// before in that object (in any ASCII case), or the reserved key.
    fn key<E: de::Error>(&mut self, seen: &mut Seen, key: Cow<'de, str>) -> Result<(), E> {
        reserved(&key)?;
        let repeated = match &mut seen.set {
            Some(set) => !set.insert(key.to_ascii_lowercase()),
            None => {
                let earlier = &self.keys[seen.start..];
                let repeated = earlier.iter().any(|k| k.eq_ignore_ascii_case(&key));
                if !repeated && earlier.len() >= LISTED_KEYS {
                    let all = earlier.iter().chain([&key]);
                    seen.set = Some(all.map(|k| k.to_ascii_lowercase()).collect());
                }
                repeated
            }
        };
        if repeated {
            return Err(E::custom("repeated key"));
        }
        self.keys.push(key);
        Ok(())
    }

    /// The next value of `map`: its strings are text unless its key is
    /// `structural`. Whether it is a non-empty array.
    fn value<A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
        structural: bool,
    ) -> Result<bool, A::Error> {
        if structural {
            map.next_value_seed(Skip).map(|()| false)
        } else {
            map.next_value_seed(Text {
                r: self,
                options: false,
            })
        }
    }

    fn count(&mut self, n: Option<u64>) {
        self.max_tokens = self.max_tokens.max(n);
    }
}

/// The keys of one object so far, for [`Reader::key`]: listed on the
/// reader's stack from `start`, and in `set` (lower-cased) once there are
/// more than [`LISTED_KEYS`].
struct Seen {
    start: usize,
    set: Option<std::collections::HashSet<String>>,
}

impl Seen {
    fn at(start: usize) -> Seen {
        Seen { start, set: None }
    }
}

fn reserved<E: de::Error>(key: &str) -> Result<(), E> {
    if key == RAW_VALUE_KEY {
        return Err(E::custom("reserved key"));
    }
    Ok(())
}

/// A key through [`go_name`], borrowed from the body unless it has
/// escapes (or letters `go_name` folds).
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(go_name(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(go_name(Cow::Borrowed(s)).into_owned()))
    }
}

/// The top-level object: the fields the conditions read, and the text.
struct Top<'r, 'de>(&'r mut Reader<'de>);

impl<'de> Visitor<'de> for Top<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let r = self.0;
        let mut seen = Seen::at(0);
        while let Some(key) = map.next_key_seed(Key)? {
            r.key(&mut seen, key)?;
            let key = r.keys.last().expect("just pushed");
            let is = |name: &str| key.eq_ignore_ascii_case(name);
            if r.model.is_some() && *key == "model" {
                // As the gateway's probe reads it (`intake::probe_model`).
                r.model = Some(map.next_value::<Option<Cow<'de, str>>>()?);
            } else if is("stream") {
                r.stream |= map.next_value_seed(Lax)?.truthy;
            } else if is("max_tokens") || is("max_completion_tokens") || is("max_output_tokens") {
                let n = map.next_value_seed(Lax)?.count;
                r.count(n);
            } else if is("options") {
                map.next_value_seed(Text {
                    r: &mut *r,
                    options: true,
                })?;
            } else if is("tools") || is("functions") {
                r.tools |= r.value(&mut map, false)?;
            } else {
                let structural = is_structural(key);
                r.value(&mut map, structural)?;
            }
        }
        Ok(())
    }
}

/// A value whose strings are prompt text. Yields whether it is a non-empty
/// array (`tools`). `options`: the top-level `options` object, whose
/// `num_predict` is a count.
struct Text<'r, 'de> {
    r: &'r mut Reader<'de>,
    options: bool,
}

impl<'de> DeserializeSeed<'de> for Text<'_, 'de> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Text<'_, 'de> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, s: &str) -> Result<bool, E> {
        if !self.r.prompt.is_empty() {
            self.r.prompt.push('\n');
        }
        self.r.prompt.push_str(s);
        Ok(false)
    }
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut any = false;
        while seq
            .next_element_seed(Text {
                r: &mut *self.r,
                options: false,
            })?
            .is_some()
        {
            any = true;
        }
        Ok(any)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let r = self.r;
        let start = r.keys.len();
        let mut seen = Seen::at(start);
        while let Some(key) = map.next_key_seed(Key)? {
            r.key(&mut seen, key)?;
            let key = r.keys.last().expect("just pushed");
            if self.options && key.eq_ignore_ascii_case("num_predict") {
                let n = map.next_value_seed(Lax)?.count;
                r.count(n);
            } else {
                let structural = is_structural(key);
                r.value(&mut map, structural)?;
            }
        }
        r.keys.truncate(start);
        Ok(false)
    }
}

/// A value read for nothing but its validity, as strictly as a [`Value`]
/// reads it (not `IgnoredAny`, which lets invalid UTF-8 and lone
/// surrogates by).
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(Key)? {
            reserved(&key)?;
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// A flag and a count, as [`lax_true`] and [`lax_u64`] read a value.
#[derive(Default)]
struct LaxValue {
    truthy: bool,
    count: Option<u64>,
}

/// Reads a [`LaxValue`]; arrays and objects are neither.
struct Lax;

impl<'de> DeserializeSeed<'de> for Lax {
    type Value = LaxValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<LaxValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Lax {
    type Value = LaxValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<LaxValue, E> {
        Ok(LaxValue {
            truthy: b,
            count: None,
        })
    }
    fn visit_u64<E>(self, n: u64) -> Result<LaxValue, E> {
        Ok(LaxValue {
            truthy: n != 0,
            count: Some(n),
        })
    }
    fn visit_i64<E>(self, n: i64) -> Result<LaxValue, E> {
        Ok(LaxValue {
            truthy: n != 0,
            count: u64::try_from(n).ok(),
        })
    }
    fn visit_f64<E>(self, f: f64) -> Result<LaxValue, E> {
        Ok(LaxValue {
            truthy: f != 0.0,
            count: non_negative(f),
        })
    }
    fn visit_str<E>(self, s: &str) -> Result<LaxValue, E> {
        Ok(LaxValue {
            truthy: lax_true_str(s),
            count: lax_u64_str(s),
        })
    }
    fn visit_unit<E>(self) -> Result<LaxValue, E> {
        Ok(LaxValue::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<LaxValue, A::Error> {
        Skip.visit_seq(seq).map(|()| LaxValue::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LaxValue, A::Error> {
        Skip.visit_map(map).map(|()| LaxValue::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_read_openai_anthropic_and_ollama_bodies() {
        let f = Features::of(
            br#"{"model":"m","stream":true,"max_tokens":99,"max_completion_tokens":500,
                "tools":[{"type":"function"}],
                "messages":[{"role":"system","content":"be nice"},
                            {"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"u"}}]}]}"#,
        );
        assert!(f.stream && f.tools);
        assert_eq!(f.max_tokens, Some(500));
        assert_eq!(f.prompt, "be nice\nhello");
        let f = Features::of(
            br#"{"system":"sys","messages":[{"role":"user","content":"hi"}],"tools":[]}"#,
        );
        assert!(!f.tools && !f.stream);
        assert_eq!(f.prompt, "sys\nhi");
        let f = Features::of(br#"{"model":"m","prompt":"why?","options":{"num_predict":64}}"#);
        assert_eq!((f.max_tokens, f.prompt.as_str()), (Some(64), "why?"));
        let f = Features::of(b"not json at all");
        assert_eq!(f.prompt, "not json at all");
    }

    #[test]
    fn bodies_are_read_as_lenient_servers_read_them() {
        let f = Features::of(
            br#"{"Stream":"true","MAX_TOKENS":"4000.5","Tools":[{}],"Messages":[{"Role":"user","Content":"hi"}]}"#,
        );
        assert!(f.json && f.stream && f.tools);
        assert_eq!(f.max_tokens, Some(4001));
        assert_eq!(f.prompt, "hi");
        let f = Features::of(
            br#"{"stream":0,"max_tokens":-5,"messages":[
            {"role":"assistant","tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":"{\"q\":\"secret\"}"}}]},
            {"role":"user","content":[{"type":"document","source":{"type":"text","media_type":"text/plain","data":"doc text"}}]}]}"#,
        );
        assert!(!f.stream);
        assert_eq!(f.max_tokens, None);
        assert_eq!(f.prompt, "f\n{\"q\":\"secret\"}\ndoc text");
    }

    /// Bodies as clients send them: read in the one pass, as a `Value` reads them.
    #[test]
    fn the_one_pass_reads_real_bodies_and_agrees() {
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":\"v{i}\"")).collect();
        let many = format!("{{\"messages\":[{{{}}}]}}", many.join(","));
        for body in [
            &br#"{"model":"m","stream":true,"max_tokens":99,"messages":[{"role":"user","content":"hi"}]}"#[..],
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a\nb \u00e9 \ud83d\ude00"}]}],"tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object"}}}]}"#,
            br#"{"model":"m","prompt":"why?","options":{"num_predict":"64","temperature":0.2},"stream":"yes"}"#,
            br#"{"system":[{"type":"text","text":"sys"}],"max_tokens":1e3,"messages":[]}"#,
            // A repeat where the rules read nothing is no reason to refuse.
            br#"{"response_format":{"type":"a","type":"b"},"prompt":"p"}"#,
            many.as_bytes(),
            br#"{}"#,
        ] {
            let text = String::from_utf8_lossy(body);
            let (f, _) = read(body, false).unwrap_or_else(|| panic!("declined {text}"));
            assert!(f.json);
            assert_eq!(f, Features::of_value(body), "{text}");
        }
    }

    /// Keys are matched with field names as Go's `encoding/json` (Ollama)
    /// matches them, non-ASCII letters that fold onto ASCII ones included.
    #[test]
    fn field_names_fold_as_go_folds_them() {
        let f = Features::of(
            "{\"\u{17F}tream\":true,\"max_to\u{212A}ens\":\"9000\",\"tool\u{17F}\":[{}],\"messages\":[{\"\u{17F}ource\":\"s\",\"\u{17F}eed\":\"x\"}]}"
                .as_bytes(),
        );
        assert!(f.json && f.stream && f.tools);
        assert_eq!(f.max_tokens, Some(9000));
        // `ſeed` is `seed`, structural; `ſource` is text.
        assert_eq!(f.prompt, "s");
        // Escaped in the JSON text too.
        let f = Features::of(br#"{"options":{"num_predict":64},"\u017ftream":"yes"}"#);
        assert!(f.stream && f.max_tokens == Some(64));
    }

    /// Bodies a model server could read otherwise than the rules do are not
    /// JSON to the rules (a policy that reads bodies answers 400).
    #[test]
    fn bodies_servers_could_read_otherwise_are_not_json() {
        let mut bodies: Vec<Vec<u8>> = [
            &br#"{"max_tokens":9000,"max_tokens":10,"messages":[{"content":"a"}]}"#[..],
            br#"{"Stream":true,"stream":false}"#,
            br#"{"messages":[{"content":"public","content":"secret"}]}"#,
            br#"{"messages":[{"content":"public","Content":"secret"}]}"#,
            br#"{"messages":[{"content":"public"}],"messages":[{"content":"secret"}]}"#,
            br#"{"options":{"num_predict":100000},"options":{"seed":1}}"#,
            br#"{"options":{"num_predict":9000,"NUM_PREDICT":1}}"#,
            br#"{"role":"x","\u0072ole":"y","content":"z"}"#,
            // serde_json's reserved key: a `Value` swaps the object for the
            // JSON in its string, anywhere, even under a structural key.
            br#"{"$serde_json::private::RawValue":"{\"stream\":true}"}"#,
            br#"{"tools":[{"function":{"parameters":{"$serde_json::private::RawValue":"{\"type\":\"ignore all\"}"}}}]}"#,
            br#"{"model":{"$serde_json::private::RawValue":1},"messages":[{"content":"x"}]}"#,
            br#"{"stream":[{"$serde_json::private::Raw\u0056alue":"1"}],"prompt":"p"}"#,
        ]
        .iter()
        .map(|b| b.to_vec())
        .collect();
        // Go's folding: `ſ` is `s`, the Kelvin sign `k`.
        bodies.push("{\"max_tokens\":10,\"max_to\u{212A}ens\":100000}".into());
        bodies.push("{\"stream\":false,\"\u{17F}tream\":true}".into());
        // Repeats among many keys (the set, not the list).
        for last in ["k0", "K39"] {
            let mut keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\":\"v\"")).collect();
            keys.push(format!("\"{last}\":\"w\""));
            bodies.push(format!("{{\"messages\":[{{{}}}]}}", keys.join(",")).into_bytes());
        }
        for body in &bodies {
            let f = Features::of(body);
            assert_eq!(f, not_json(body), "{}", String::from_utf8_lossy(body));
        }
        // Not JSON to either reading, even where no text is read.
        for body in [
            &br#"{"role":"\ud800","content":"hi"}"#[..],
            b"{\"role\":\"\xff\",\"content\":\"hi\"}",
            br#"{"content":"hi"} x"#,
            br#"["hi"]"#,
            "\u{feff}{\"stream\":true}".as_bytes(),
        ] {
            let f = Features::of(body);
            assert!(!f.json, "{}", String::from_utf8_lossy(body));
            assert_eq!(f, Features::of_value(body));
        }
    }

    /// A body as a tree that keeps every key (a `Value` keeps one of a
    /// repeated key and knows serde_json's reserved key): the proptest's
    /// independent view of what the rules must refuse.
    enum Tree {
        Object(Vec<(String, Tree)>),
        Array(Vec<Tree>),
        Scalar,
    }

    impl<'de> serde::Deserialize<'de> for Tree {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tree, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Tree;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_str<E>(self, _: &str) -> Result<Tree, E> {
                    Ok(Tree::Scalar)
                }
                fn visit_bool<E>(self, _: bool) -> Result<Tree, E> {
                    Ok(Tree::Scalar)
                }
                fn visit_i64<E>(self, _: i64) -> Result<Tree, E> {
                    Ok(Tree::Scalar)
                }
                fn visit_u64<E>(self, _: u64) -> Result<Tree, E> {
                    Ok(Tree::Scalar)
                }
                fn visit_f64<E>(self, _: f64) -> Result<Tree, E> {
                    Ok(Tree::Scalar)
                }
                fn visit_unit<E>(self) -> Result<Tree, E> {
                    Ok(Tree::Scalar)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
                    let mut items = Vec::new();
                    while let Some(t) = seq.next_element()? {
                        items.push(t);
                    }
                    Ok(Tree::Array(items))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
                    let mut entries = Vec::new();
                    while let Some(entry) = map.next_entry::<String, Tree>()? {
                        entries.push(entry);
                    }
                    Ok(Tree::Object(entries))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// Whether `t` holds the reserved key anywhere, or, in an object the
    /// rules read (`read`: not under a structural key), a key twice as Go
    /// matches field names.
    fn ambiguous(t: &Tree, read: bool) -> bool {
        let name = |k: &str| go_name(Cow::Borrowed(k)).to_ascii_lowercase();
        match t {
            Tree::Scalar => false,
            Tree::Array(items) => items.iter().any(|i| ambiguous(i, read)),
            Tree::Object(entries) => entries.iter().enumerate().any(|(i, (k, v))| {
                go_name(Cow::Borrowed(k)) == RAW_VALUE_KEY
                    || (read && entries[..i].iter().any(|(e, _)| name(e) == name(k)))
                    || ambiguous(v, read && !is_structural(&go_name(Cow::Borrowed(k))))
            }),
        }
    }

    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec![
            "stream",
            "Stream",
            "max_tokens",
            "MAX_TOKENS",
            "max_completion_tokens",
            "max_output_tokens",
            "options",
            "Options",
            "num_predict",
            "Num_Predict",
            "tools",
            "Tools",
            "functions",
            "role",
            "type",
            "content",
            "Content",
            "messages",
            "text",
            "model",
            "Model",
            "mod\\u0065l",
            "\\u0072ole",
            "$serde_json::private::RawValue",
            "\u{17F}tream",
            "max_to\u{212A}ens",
            "tool\u{17F}",
            "\\u017ftream",
            "a",
            "b",
            "c",
            "d",
        ]);
        let leaf = prop::sample::select(vec![
            "true",
            "false",
            "null",
            "0",
            "-0",
            "1",
            "-5",
            "4000.5",
            "1e3",
            "18446744073709551616",
            "\"true\"",
            "\" 4000 \"",
            "\"yes\"",
            "\"On\"",
            "\"hello\"",
            "\"a\\nb\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud800\"",
            "\"BAD\"",
            "\"\"",
            "\"{\\\"stream\\\":true}\"",
        ])
        .prop_map(str::to_string);
        let value = leaf.prop_recursive(4, 48, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(|kv| {
                    let kv: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                    format!("{{{}}}", kv.join(","))
                }),
            ]
        });
        prop_oneof![
            9 => value.clone().prop_filter("an object", |v| v.starts_with('{')),
            1 => value,
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(1024))]

        /// The one pass gives what a `Value` reading gives, or refuses a
        /// body (not JSON to the rules) exactly when it is ambiguous.
        #[test]
        fn the_one_pass_agrees_with_the_value_reading(text in json_text()) {
            // Invalid UTF-8 where the text says BAD.
            let body: Vec<u8> = text.replace("BAD", "\u{1}").into_bytes();
            let body: Vec<u8> = body.into_iter().map(|b| if b == 1 { 0xff } else { b }).collect();
            let f = Features::of(&body);
            match serde_json::from_slice::<Tree>(&body) {
                Ok(t @ Tree::Object(_)) if !ambiguous(&t, true) => {
                    proptest::prop_assert!(f.json);
                    proptest::prop_assert_eq!(f, Features::of_value(&body));
                }
                _ => proptest::prop_assert_eq!(f, not_json(&body)),
            }
        }

        /// Read with the `model`, a body gives the features [`Features::of`]
        /// gives and the model the gateway's probe reads; it is declined
        /// only where the probe refuses the body or the rules do not read
        /// it as JSON (the gateway then reads the two separately).
        #[test]
        fn the_model_read_in_the_one_pass_is_the_probes(text in json_text()) {
            let body: Vec<u8> = text.replace("BAD", "\u{1}").into_bytes();
            let body: Vec<u8> = body.into_iter().map(|b| if b == 1 { 0xff } else { b }).collect();
            let probe = crate::gateway::intake::model_of(&body);
            match Features::with_model(&body) {
                Some((f, model)) => {
                    proptest::prop_assert_eq!(f, Features::of(&body));
                    proptest::prop_assert_eq!(Some(model), probe.ok());
                }
                None => proptest::prop_assert!(probe.is_err() || !Features::of(&body).json),
            }
        }
    }

    #[test]
    fn the_model_is_read_with_the_features_as_the_probe_reads_it() {
        let with = |b: &str| Features::with_model(b.as_bytes()).map(|(f, m)| (f.prompt, m));
        let some = |p: &str, m: Option<&str>| Some((p.to_string(), m.map(str::to_string)));
        assert_eq!(with(r#"{"model":"m","prompt":"p"}"#), some("p", Some("m")));
        assert_eq!(
            with(r#"{"mod\u0065l":"a\u00e9b"}"#),
            some("", Some("a\u{e9}b"))
        );
        assert_eq!(with(r#"{"model":null,"prompt":"p"}"#), some("p", None));
        assert_eq!(with(r#"{"prompt":"p"}"#), some("p", None));
        // Only the exact key is the model; `Model` is a structural key to the rules.
        assert_eq!(with(r#"{"Model":"x","prompt":"p"}"#), some("p", None));
        // What the probe refuses, and what the rules do not read, is declined.
        assert_eq!(with(r#"{"model":7}"#), None);
        assert_eq!(with(r#"{"model":{"name":"x"}}"#), None);
        assert_eq!(with(r#"{"model":"a","model":"b"}"#), None);
        assert_eq!(with(r#"["x"]"#), None);
        // `Features::of` is unchanged by a `model` the probe would refuse.
        assert!(Features::of(br#"{"model":7,"prompt":"p"}"#).json);
    }
}
