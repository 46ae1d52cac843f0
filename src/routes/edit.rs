//! The pure halves of `sluice rollout`: a Route's new traffic from `TARGET=PERCENT` shares, and
//! the rewrite of that traffic in the manifest file that holds the Route, which leaves every
//! other document, comment and byte of the file as it was.
//!
//! The Route's `spec.traffic` is found by position in the source text: the YAML parser gives
//! where the `traffic` key and its value start; a flow (or JSON) list ends at its matching `]`,
//! a block list at the first line indented less than its key (or as much, without a `- `).

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use crate::knative::SERVING_GROUP;

/// A traffic target as written: its fields, whatever they are.
pub type RawTarget = Map<String, Value>;

/// The name `TARGET` takes for the Route's latest ready revision, as kn spells it.
pub const LATEST: &str = "@latest";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("{0:?} is not TARGET=PERCENT (for example hello-00001=90%)")]
    BadShare(String),
    #[error("{target}: {percent:?} is not a percent from 0 to 100 (for example 90 or 90%)")]
    BadPercent { target: String, percent: String },
    #[error("{target} is given more than once")]
    Repeated { target: String },
    #[error("the percents sum to {sum}, not 100")]
    Sum { sum: i64 },
    #[error(
        "{target} is not a tag of Route {route} (tags: {tags}), nor a revision it routes to or \
         a revision (Service) in its namespace"
    )]
    UnknownTarget {
        target: String,
        route: String,
        tags: String,
    },
    #[error(
        "@latest follows a Configuration, and Route {route} has no configurationName target; \
         name a revision instead"
    )]
    NoLatest { route: String },
}

/// Reads `-p TARGET=PERCENT` arguments; each may also be kn's comma-separated list.
pub fn parse_shares(arguments: &[String]) -> Result<Vec<(String, i64)>, RolloutError> {
    let mut shares: Vec<(String, i64)> = Vec::new();
    for share in arguments.iter().flat_map(|argument| argument.split(',')) {
        let share = share.trim();
        let Some((target, percent)) = share.split_once('=') else {
            return Err(RolloutError::BadShare(share.to_owned()));
        };
        let (target, percent_text) = (target.trim(), percent.trim());
        if target.is_empty() {
            return Err(RolloutError::BadShare(share.to_owned()));
        }
        let percent = percent_text
            .strip_suffix('%')
            .unwrap_or(percent_text)
            .parse::<i64>()
            .ok()
            .filter(|percent| (0..=100).contains(percent))
            .ok_or_else(|| RolloutError::BadPercent {
                target: target.to_owned(),
                percent: percent_text.to_owned(),
            })?;
        if shares.iter().any(|(seen, _)| seen == target) {
            return Err(RolloutError::Repeated {
                target: target.to_owned(),
            });
        }
        shares.push((target.to_owned(), percent));
    }
    Ok(shares)
}

/// The Route's traffic after a rollout, as kn computes it: every target's percent is reset,
/// then each share is set on the tag it names, `@latest` on the untagged latest-revision
/// target, a revision on its untagged target (else any target of that revision, else a new
/// one, when `is_revision` knows it); untagged targets left at 0% are dropped, tagged ones
/// keep serving their tag's host. The shares must sum to 100.
pub fn new_traffic(
    route: &str,
    existing: &[RawTarget],
    shares: &[(String, i64)],
    is_revision: impl Fn(&str) -> bool,
) -> Result<Vec<RawTarget>, RolloutError> {
    let sum: i64 = shares.iter().map(|(_, percent)| percent).sum();
    if sum != 100 {
        return Err(RolloutError::Sum { sum });
    }
    let text = |target: &RawTarget, field: &str| {
        target
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let tag = |target: &RawTarget| {
        Some(text(target, "tag"))
            .filter(|tag| !tag.is_empty())
            .unwrap_or_else(|| text(target, "name"))
    };
    let latest = |target: &RawTarget| {
        target
            .get("latestRevision")
            .and_then(Value::as_bool)
            .unwrap_or_else(|| text(target, "revisionName").is_empty())
    };
    let mut traffic: Vec<RawTarget> = existing.to_vec();
    for target in &mut traffic {
        target.insert("percent".to_owned(), 0.into());
    }
    for (name, percent) in shares {
        let found = if name == LATEST {
            traffic.iter().position(|t| tag(t).is_empty() && latest(t))
        } else {
            traffic
                .iter()
                .position(|t| tag(t) == *name)
                .or_else(|| {
                    traffic
                        .iter()
                        .position(|t| tag(t).is_empty() && text(t, "revisionName") == *name)
                })
                .or_else(|| {
                    traffic
                        .iter()
                        .position(|t| text(t, "revisionName") == *name)
                })
        };
        let index = match found {
            Some(index) => index,
            None if name == LATEST => {
                let configuration = traffic
                    .iter()
                    .map(|t| text(t, "configurationName"))
                    .find(|c| !c.is_empty())
                    .ok_or_else(|| RolloutError::NoLatest {
                        route: route.to_owned(),
                    })?;
                traffic.push(Map::from_iter([(
                    "configurationName".to_owned(),
                    configuration.into(),
                )]));
                traffic.len() - 1
            }
            None if is_revision(name) => {
                traffic.push(Map::from_iter([(
                    "revisionName".to_owned(),
                    name.clone().into(),
                )]));
                traffic.len() - 1
            }
            None => {
                let tags: Vec<String> = existing
                    .iter()
                    .map(tag)
                    .filter(|tag| !tag.is_empty())
                    .collect();
                return Err(RolloutError::UnknownTarget {
                    target: name.clone(),
                    route: route.to_owned(),
                    tags: if tags.is_empty() {
                        "none".to_owned()
                    } else {
                        tags.join(", ")
                    },
                });
            }
        };
        traffic[index].insert("percent".to_owned(), (*percent).into());
    }
    traffic.retain(|t| !tag(t).is_empty() || t.get("percent").and_then(Value::as_i64) != Some(0));
    Ok(traffic)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("it is not valid YAML or JSON: {0}")]
    Parse(String),
    #[error("it holds no Route {namespace}/{name}")]
    NotFound { namespace: String, name: String },
    #[error("Route {0}'s spec.traffic is not a list of targets here, so it cannot be rewritten")]
    NoTraffic(String),
}

/// Where a Route's `spec.traffic` list is in a manifest's text, and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficBlock {
    range: Range<usize>,
    /// A `[...]` list (YAML flow style, or JSON); else a block list of `- ` items.
    flow: bool,
    /// The block list's item indentation.
    indent: usize,
    pub targets: Vec<RawTarget>,
}

#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    spec: Option<HashMap<Spanned<String>, Spanned<Value>>>,
    #[serde(default)]
    items: Vec<Shape>,
}

/// Finds Route `namespace/name` (a document of its own, or an item of a `List`) in a manifest
/// file's text; the first definition wins, as in the file source.
pub fn find(text: &str, namespace: &str, name: &str) -> Result<TrafficBlock, EditError> {
    let parse = |error: serde_saphyr::Error| EditError::Parse(error.without_snippet().to_string());
    let documents: Vec<Spanned<Value>> = serde_saphyr::from_multiple(text).map_err(parse)?;
    let is_route = |value: &Value| {
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        api_version.split_once('/').map(|(group, _)| group) == Some(SERVING_GROUP)
            && value["kind"] == "Route"
            && value["metadata"]["name"] == name
            && value["metadata"]["namespace"]
                .as_str()
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default")
                == namespace
    };
    let not_found = || EditError::NotFound {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let (index, item) = documents
        .iter()
        .enumerate()
        .find_map(|(index, document)| {
            if is_route(&document.value) {
                return Some((index, None));
            }
            let items = document.value["items"].as_array()?;
            items
                .iter()
                .position(is_route)
                .map(|item| (index, Some(item)))
        })
        .ok_or_else(not_found)?;
    let offset = |document: &Spanned<Value>| {
        document
            .referenced
            .span()
            .byte_offset()
            .map_or(0, |offset| offset as usize)
    };
    let start = line_start(text, offset(&documents[index]));
    let end = documents.get(index + 1).map_or(text.len(), offset);
    let shapes: Vec<Shape> = serde_saphyr::from_multiple(&text[start..end]).map_err(parse)?;
    let shape = shapes.into_iter().next().ok_or_else(not_found)?;
    let shape = match item {
        Some(item) => shape.items.into_iter().nth(item).ok_or_else(not_found)?,
        None => shape,
    };
    let route = format!("{namespace}/{name}");
    let (key, value) = shape
        .spec
        .into_iter()
        .flatten()
        .find(|(key, _)| key.value == "traffic")
        .ok_or_else(|| EditError::NoTraffic(route.clone()))?;
    let targets = match &value.value {
        Value::Array(targets) => targets
            .iter()
            .map(|target| target.as_object().cloned())
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
    .ok_or_else(|| EditError::NoTraffic(route.clone()))?;
    let at = |spanned: Option<u64>| start + spanned.map_or(0, |offset| offset as usize);
    let value_at = at(value.referenced.span().byte_offset());
    let key_at = at(key.referenced.span().byte_offset());
    if text[value_at..].starts_with('[') {
        let end = matching_bracket(text, value_at).ok_or(EditError::NoTraffic(route))?;
        return Ok(TrafficBlock {
            range: value_at..end,
            flow: true,
            indent: 0,
            targets,
        });
    }
    let key_indent = key_at - line_start(text, key_at);
    let first = line_start(text, value_at);
    let indent = text[first..].len() - text[first..].trim_start_matches(' ').len();
    let mut end = first;
    let mut line = first;
    while line < text.len() {
        let next = text[line..].find('\n').map_or(text.len(), |i| line + i + 1);
        let content = &text[line..next];
        let trimmed = content.trim_start_matches(' ');
        let blank = trimmed.trim().is_empty() || trimmed.starts_with('#');
        if !blank {
            let line_indent = content.len() - trimmed.len();
            let item = trimmed.starts_with("- ") || trimmed.trim_end() == "-";
            if line_indent < key_indent || (line_indent == key_indent && !item) {
                break;
            }
            end = next;
        }
        line = next;
    }
    Ok(TrafficBlock {
        range: first..end,
        flow: false,
        indent,
        targets,
    })
}

/// `text` with the block's list replaced by `traffic`, in the list's own style.
pub fn replace(text: &str, block: &TrafficBlock, traffic: &[RawTarget]) -> String {
    let list = if block.flow {
        let items: Vec<String> = traffic
            .iter()
            .map(|target| {
                let fields: Vec<String> = ordered(target)
                    .map(|(key, value)| format!("{}: {value}", Value::from(key)))
                    .collect();
                format!("{{{}}}", fields.join(", "))
            })
            .collect();
        format!("[{}]", items.join(", "))
    } else {
        let pad = " ".repeat(block.indent);
        let mut lines = String::new();
        for target in traffic {
            for (index, (key, value)) in ordered(target).enumerate() {
                let lead = if index == 0 { "- " } else { "  " };
                lines.push_str(&format!("{pad}{lead}{key}: {}\n", yaml_scalar(value)));
            }
        }
        lines
    };
    let mut rewritten = String::with_capacity(text.len() + list.len());
    rewritten.push_str(&text[..block.range.start]);
    rewritten.push_str(&list);
    rewritten.push_str(&text[block.range.end..]);
    rewritten
}

/// A target's fields in the order people write them, then any others by name.
fn ordered(target: &RawTarget) -> impl Iterator<Item = (&str, &Value)> {
    const ORDER: [&str; 6] = [
        "tag",
        "name",
        "revisionName",
        "configurationName",
        "latestRevision",
        "percent",
    ];
    let known = ORDER.iter().filter_map(|key| target.get_key_value(*key));
    let others = target
        .iter()
        .filter(|(key, _)| !ORDER.contains(&key.as_str()));
    known
        .chain(others)
        .map(|(key, value)| (key.as_str(), value))
}

/// A value as YAML: a string plainly when it cannot read as anything else, else as JSON.
fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::String(text) => {
            let plain = text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'))
                && text.starts_with(|c: char| c.is_ascii_alphabetic())
                && !matches!(
                    text.to_ascii_lowercase().as_str(),
                    "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null"
                );
            if plain {
                text.clone()
            } else {
                value.to_string()
            }
        }
        other => other.to_string(),
    }
}

fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |i| i + 1)
}

/// The end (exclusive) of the flow list that opens at `open`, skipping quoted strings.
fn matching_bracket(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let bytes = text.as_bytes();
    let mut i = open;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == b'\\' && q == b'"' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'[' | b'{' => depth += 1,
                b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(json: &str) -> Vec<RawTarget> {
        serde_json::from_str(json).unwrap()
    }

    fn shares(args: &[&str]) -> Vec<(String, i64)> {
        parse_shares(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn shares_read_knctl_and_kn_spellings() {
        assert_eq!(
            shares(&["a=90%", "b=10"]),
            [("a".to_owned(), 90), ("b".to_owned(), 10)]
        );
        assert_eq!(
            shares(&["a=90,@latest=10"]),
            [("a".to_owned(), 90), ("@latest".to_owned(), 10)]
        );
        let bad = |args: &[&str]| {
            parse_shares(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).unwrap_err()
        };
        assert!(matches!(bad(&["a"]), RolloutError::BadShare(_)));
        assert!(matches!(bad(&["a=101"]), RolloutError::BadPercent { .. }));
        assert!(matches!(
            bad(&["a=1", "a=2"]),
            RolloutError::Repeated { .. }
        ));
    }

    #[test]
    fn tags_revisions_and_latest_get_their_share() {
        let existing = targets(
            r#"[{"tag": "blue", "revisionName": "hello-1", "percent": 100},
                {"tag": "green", "revisionName": "hello-2"},
                {"configurationName": "hello", "percent": 0}]"#,
        );
        let traffic = new_traffic(
            "ns/hello",
            &existing,
            &shares(&["hello-1=80", "green=10", "@latest=10"]),
            |_| false,
        )
        .unwrap();
        assert_eq!(
            traffic,
            targets(
                r#"[{"tag": "blue", "revisionName": "hello-1", "percent": 80},
                    {"tag": "green", "revisionName": "hello-2", "percent": 10},
                    {"configurationName": "hello", "percent": 10}]"#
            )
        );
        let moved = new_traffic("ns/hello", &traffic, &shares(&["hello-3=100"]), |rev| {
            rev == "hello-3"
        })
        .unwrap();
        assert_eq!(
            moved,
            targets(
                r#"[{"tag": "blue", "revisionName": "hello-1", "percent": 0},
                    {"tag": "green", "revisionName": "hello-2", "percent": 0},
                    {"revisionName": "hello-3", "percent": 100}]"#
            ),
            "untagged targets at 0% are dropped, tagged ones stay"
        );
    }

    #[test]
    fn a_bad_rollout_names_what_is_wrong() {
        let existing = targets(r#"[{"tag": "blue", "revisionName": "hello-1", "percent": 100}]"#);
        assert_eq!(
            new_traffic(
                "ns/hello",
                &existing,
                &shares(&["blue=60", "hello-2=50"]),
                |_| true
            ),
            Err(RolloutError::Sum { sum: 110 })
        );
        let unknown =
            new_traffic("ns/hello", &existing, &shares(&["purple=100"]), |_| false).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "purple is not a tag of Route ns/hello (tags: blue), nor a revision it routes to or \
             a revision (Service) in its namespace"
        );
        assert!(matches!(
            new_traffic("ns/hello", &existing, &shares(&["@latest=100"]), |_| true),
            Err(RolloutError::NoLatest { .. })
        ));
    }

    const FILE: &str = "\
# The hello app.
apiVersion: v1
kind: Service
metadata: {name: hello-00001, namespace: hello-test}
---
apiVersion: serving.knative.dev/v1
kind: Route
metadata:
  name: hello   # the route
  namespace: hello-test
spec:
  traffic:
  - tag: blue
    revisionName: hello-00001   # blue
    percent: 100

  # green is the next one
  - tag: green
    revisionName: hello-00002
    percent: 0
  # trailing comment
status: {}
---
apiVersion: serving.knative.dev/v1
kind: Route
metadata: {name: other, namespace: hello-test}
spec: {traffic: [{revisionName: \"x\", percent: 100}], extra: 1}
";

    #[test]
    fn a_block_list_is_rewritten_in_place() {
        let block = find(FILE, "hello-test", "hello").unwrap();
        assert_eq!(block.targets.len(), 2);
        let traffic = targets(
            r#"[{"tag": "blue", "revisionName": "hello-00001", "percent": 90},
                {"tag": "green", "revisionName": "hello-00002", "percent": 10}]"#,
        );
        let rewritten = replace(FILE, &block, &traffic);
        let expected = FILE.replace(
            "  - tag: blue\n    revisionName: hello-00001   # blue\n    percent: 100\n\n  # green is the next one\n  - tag: green\n    revisionName: hello-00002\n    percent: 0\n",
            "  - tag: blue\n    revisionName: hello-00001\n    percent: 90\n  - tag: green\n    revisionName: hello-00002\n    percent: 10\n",
        );
        assert_ne!(expected, FILE);
        assert_eq!(rewritten, expected);
        assert_eq!(
            find(&rewritten, "hello-test", "hello").unwrap().targets,
            traffic
        );
    }

    #[test]
    fn a_flow_list_and_a_json_file_keep_their_style() {
        let block = find(FILE, "hello-test", "other").unwrap();
        let traffic = targets(r#"[{"revisionName": "y", "percent": 100}]"#);
        let rewritten = replace(FILE, &block, &traffic);
        assert_eq!(
            rewritten,
            FILE.replace(
                "[{revisionName: \"x\", percent: 100}]",
                "[{\"revisionName\": \"y\", \"percent\": 100}]"
            )
        );
        let json = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"apiVersion": "serving.knative.dev/v1", "kind": "Route",
     "metadata": {"name": "j"},
     "spec": {"traffic": [
        {"revisionName": "a]b", "percent": 100}
     ]}}
  ]
}
"#;
        let block = find(json, "default", "j").unwrap();
        let rewritten = replace(json, &block, &traffic);
        let parsed: Value = serde_json::from_str(&rewritten).unwrap();
        assert_eq!(
            parsed["items"][0]["spec"]["traffic"][0]["revisionName"],
            "y"
        );
        assert!(rewritten.starts_with("{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"List\""));
    }

    #[test]
    fn a_missing_route_is_reported() {
        assert_eq!(
            find(FILE, "default", "hello"),
            Err(EditError::NotFound {
                namespace: "default".into(),
                name: "hello".into()
            })
        );
        assert!(matches!(find("a: [", "x", "y"), Err(EditError::Parse(_))));
    }
}
