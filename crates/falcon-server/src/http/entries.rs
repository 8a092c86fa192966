//! The entries of a batch (`texts` of `POST /infer/batch`, `data` of an OIP tensor), read
//! without building what they hold. A string is kept; anything else is skipped as it is
//! parsed (`IgnoredAny`) and remembered only as "not a text", so a body of nested arrays
//! costs no more memory than its bytes. Reading stops at the first entry past the batch
//! limit (`MAX_BATCH_TEXTS`): the rest of the body is never parsed.
//!
//! The limit is set for one parse on the parsing thread (`with_limit`): `serde_json` parses
//! a slice synchronously, on the caller's thread, so the thread-local is exactly that parse's.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

thread_local! {
    /// Entries the parse on this thread may read; `None`: no limit.
    static LIMIT: Cell<Option<usize>> = const { Cell::new(None) };
    /// Whether that parse stopped at the limit.
    static EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `parse` with at most `max` entries per `Entries`; also says whether it stopped there.
pub fn with_limit<T>(max: usize, parse: impl FnOnce() -> T) -> (T, bool) {
    LIMIT.set(Some(max));
    EXCEEDED.set(false);
    let parsed = parse();
    LIMIT.set(None);
    (parsed, EXCEEDED.replace(false))
}

/// One entry as the batch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A string.
    Text(String),
    /// An array of exactly one string (`[[t], [t]]`, OIP's shape `[n, 1]`).
    Wrapped(String),
    /// Anything else (a number, an object, a longer array …).
    Other,
}

/// The entries of one batch, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Entries(pub Vec<Entry>);

impl Entries {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads one entry: a string is kept; an array (at the top) of exactly one string is
/// `Wrapped`; anything else is skipped as it is parsed.
#[derive(Clone, Copy)]
struct EntryVisitor {
    /// An entry itself, not inside one: only there does `[text]` count.
    top: bool,
}

impl<'de> de::DeserializeSeed<'de> for EntryVisitor {
    type Value = Entry;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Entry, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<Entry, E> {
        Ok(Entry::Text(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Entry, E> {
        Ok(Entry::Text(v))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Entry, E> {
        Ok(Entry::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Entry, E> {
        Ok(Entry::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Entry, E> {
        Ok(Entry::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Entry, E> {
        Ok(Entry::Other)
    }

    fn visit_unit<E>(self) -> Result<Entry, E> {
        Ok(Entry::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry, A::Error> {
        let first = if self.top { seq.next_element_seed(EntryVisitor { top: false })? } else { None };
        let mut more = false;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            more = true;
        }
        Ok(match (first, more) {
            (Some(Entry::Text(s)), false) => Entry::Wrapped(s),
            _ => Entry::Other,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Entry::Other)
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;

        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of texts")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entries, A::Error> {
                let limit = LIMIT.get().unwrap_or(usize::MAX);
                let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(limit.min(1024)));
                while let Some(entry) = seq.next_element_seed(EntryVisitor { top: true })? {
                    if entries.len() == limit {
                        EXCEEDED.set(true);
                        return Err(de::Error::custom(format_args!("more than {limit} entries")));
                    }
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        d.deserialize_seq(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str, max: usize) -> (Result<Entries, serde_json::Error>, bool) {
        with_limit(max, || serde_json::from_str::<Entries>(json))
    }

    #[test]
    fn strings_are_kept_and_everything_else_is_only_not_a_text() {
        let (entries, exceeded) = parse(r#"["a", ["b"], ["c", "d"], 1, null, {"x": [1]}, [[["e"]]], true]"#, 10);
        assert!(!exceeded);
        assert_eq!(
            entries.unwrap().0,
            [
                Entry::Text("a".into()),
                Entry::Wrapped("b".into()),
                Entry::Other,
                Entry::Other,
                Entry::Other,
                Entry::Other,
                Entry::Other,
                Entry::Other
            ]
        );
    }

    #[test]
    fn the_parse_stops_at_the_first_entry_past_the_limit() {
        let (entries, exceeded) = parse(r#"["a", "b", "c"]"#, 3);
        assert_eq!((entries.unwrap().len(), exceeded), (3, false));
        // Past the limit, what follows is never read: here, not even valid JSON.
        let (entries, exceeded) = parse(r#"["a", "b", "c", "d", this is never parsed"#, 3);
        assert!(entries.is_err());
        assert!(exceeded);
        let (_, exceeded) = parse(r#"["a"]"#, 3);
        assert!(!exceeded, "each parse starts afresh");
        assert!(serde_json::from_str::<Entries>(r#""not an array""#).is_err());
    }
}
