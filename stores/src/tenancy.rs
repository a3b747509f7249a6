//! Which namespaces may use a ClusterVaultStore and which objects each may read: namespace names or label selectors
//! (kube's own selector type), and object-name globs. Decided before anything is fetched.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt as _};
use vaultsync_api::store::NamespaceCondition;

use crate::StoreError;

/// Whether `namespace` (with `labels`, when [`needs_labels`] says they are needed) may use the ClusterVaultStore
/// `store` (its key) under `conditions`: the object globs it may read (`None`: every object), or the refusal.
pub fn admit(
    store: &str,
    conditions: &[NamespaceCondition],
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<Option<Vec<String>>, StoreError> {
    let matching = matching(conditions, namespace, labels);
    if matching.is_empty() {
        return Err(StoreError::NamespaceNotAllowed { store: store.into(), namespace: namespace.into() });
    }
    Ok(allowed_objects(&matching))
}

/// Refuses `object` when it is outside the globs `allowed` (`None`: every object is allowed).
pub fn check_object(store: &str, namespace: &str, allowed: Option<&[String]>, object: &str) -> Result<(), StoreError> {
    match allowed {
        Some(globs) if !globs.iter().any(|g| glob_match(g, object)) => Err(StoreError::ObjectNotAllowed {
            store: store.into(),
            namespace: namespace.into(),
            object: object.into(),
        }),
        _ => Ok(()),
    }
}

/// Whether a namespace with `labels` matches `selector`. A selector that cannot be evaluated (an unknown operator,
/// which admission normally refuses) matches nothing: refusing is the safe side.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// The conditions that let `namespace` (with `labels`, read only when a selector needs them) use the store.
pub fn matching<'a>(
    conditions: &'a [NamespaceCondition],
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Vec<&'a NamespaceCondition> {
    conditions
        .iter()
        .filter(|c| {
            c.namespaces.iter().any(|n| n == namespace)
                || c.namespace_selector.as_ref().is_some_and(|s| labels.is_some_and(|l| selector_matches(s, l)))
        })
        .collect()
}

/// Whether any condition would need the namespace's labels (a selector) to decide about `namespace`.
pub fn needs_labels(conditions: &[NamespaceCondition], namespace: &str) -> bool {
    !conditions.iter().any(|c| c.namespaces.iter().any(|n| n == namespace))
        && conditions.iter().any(|c| c.namespace_selector.is_some())
}

/// The object globs the matching conditions allow together; `None` when one of them allows every object.
pub fn allowed_objects(matching: &[&NamespaceCondition]) -> Option<Vec<String>> {
    if matching.iter().any(|c| c.allowed_objects.is_empty()) {
        None
    } else {
        Some(matching.iter().flat_map(|c| c.allowed_objects.clone()).collect())
    }
}

/// `*` matches any run of characters, `?` one character; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("team-a-*", "team-a-db-password"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("db-?", "db-1"));
        assert!(glob_match("*-password", "team-a-password"));
        assert!(!glob_match("team-a-*", "team-b-db-password"));
        assert!(!glob_match("db-?", "db-12"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    fn condition(namespaces: &[&str], selector: Option<LabelSelector>, objects: &[&str]) -> NamespaceCondition {
        NamespaceCondition {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            namespace_selector: selector,
            allowed_objects: objects.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn conditions_by_name_and_selector() {
        let team = LabelSelector {
            match_labels: Some([("team".to_string(), "a".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "In".into(),
                values: Some(vec!["prod".into(), "staging".into()]),
            }]),
        };
        let conditions =
            [condition(&["named"], None, &["named-*"]), condition(&[], Some(team), &["team-a-*", "shared-*"])];
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let prod = labels(&[("team", "a"), ("env", "prod")]);
        assert!(!needs_labels(&conditions, "named"), "named: no labels needed");
        assert!(needs_labels(&conditions, "other"));
        assert_eq!(allowed_objects(&matching(&conditions, "named", None)), Some(vec!["named-*".to_string()]));
        let by_selector = matching(&conditions, "team-ns", Some(&prod));
        assert_eq!(allowed_objects(&by_selector), Some(vec!["team-a-*".to_string(), "shared-*".to_string()]));
        assert!(matching(&conditions, "team-ns", Some(&labels(&[("team", "a"), ("env", "dev")]))).is_empty());
        assert!(matching(&conditions, "team-ns", None).is_empty(), "no labels, no selector match");
        let everything = [condition(&["named"], None, &[]), condition(&["named"], None, &["x"])];
        assert_eq!(allowed_objects(&matching(&everything, "named", None)), None, "an empty list allows all");
    }

    #[test]
    fn a_selector_that_cannot_be_evaluated_matches_nothing() {
        let odd = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "Resembles".into(),
                values: Some(vec!["a".into()]),
            }]),
            ..Default::default()
        };
        assert!(!selector_matches(&odd, &[("team".to_string(), "a".to_string())].into()));
    }
}
