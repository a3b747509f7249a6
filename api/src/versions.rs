//! `status.versions` as a sorted vector: the same JSON object as a `BTreeMap`, in a fraction of its memory.
//!
//! The operator keeps every VaultSecret's status in its watch cache. A `BTreeMap<String, String>` allocates a node for
//! eleven entries even when it holds one (about 540 bytes), and most VaultSecrets have one to a few keys; a sorted
//! vector holds exactly what it has.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser::SerializeMap as _};

/// Secret key -> vault object version, sorted by key, each key once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions(Vec<(String, String)>);

impl Versions {
    pub fn get(&self, key: &str) -> Option<&String> {
        let index = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(&self.0[index].1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for Versions {
    /// A key given twice keeps its last version, as collecting into a map does.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let map: BTreeMap<String, String> = pairs.into_iter().collect();
        map.into()
    }
}

impl From<BTreeMap<String, String>> for Versions {
    fn from(map: BTreeMap<String, String>) -> Self {
        let mut pairs: Vec<(String, String)> = map.into_iter().collect();
        pairs.shrink_to_fit();
        Versions(pairs)
    }
}

impl<'a> IntoIterator for &'a Versions {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&'a (String, String)) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl std::ops::Index<&str> for Versions {
    type Output = String;

    /// Panics when `key` is absent, as indexing a map does.
    fn index(&self, key: &str) -> &String {
        self.get(key).unwrap_or_else(|| panic!("no version for key {key:?}"))
    }
}

impl Serialize for Versions {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, version) in &self.0 {
            map.serialize_entry(key, version)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Versions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Versions;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of Secret keys to versions")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut access: A) -> Result<Versions, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((key, version)) = access.next_entry::<String, String>()? {
                    map.insert(key, version);
                }
                Ok(map.into())
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_the_json_a_map_does() {
        let json = r#"{"b":"2","a":"1","c":"3","a":"4"}"#;
        let versions: Versions = serde_json::from_str(json).expect("a map");
        assert_eq!(versions.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(versions.get("a").map(String::as_str), Some("4"), "the last of a repeated key");
        assert_eq!(versions.get("z"), None);
        let map: BTreeMap<String, String> = serde_json::from_str(json).expect("a map");
        assert_eq!(serde_json::to_string(&versions).unwrap(), serde_json::to_string(&map).unwrap());
        assert_eq!(Versions::from(map.clone()), map.into_iter().collect::<Versions>());
    }

    #[test]
    fn keeps_one_allocation_the_size_of_its_entries() {
        let versions: Versions = [("key".to_string(), "v1".to_string())].into_iter().collect();
        assert_eq!(versions.0.capacity(), 1);
        assert_eq!(versions.len(), 1);
        assert!(Versions::default().is_empty());
    }
}
