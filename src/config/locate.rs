//! Finds where a key sits in the TOML text, so that every config error names
//! the file, the line and the key, also for errors found after parsing
//! (cross-field validation) when the deserialized values no longer carry spans.

use std::fmt;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path: a table key or an index into an array of tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A dotted key path such as `sources.tusfacturas.rate` or `subscriptions[1].url`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    pub fn key(&self, name: &str) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Segment::Key(name.to_owned()));
        next
    }

    pub fn index(&self, index: usize) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    /// This path followed by `rest`.
    pub fn join(&self, rest: &KeyPath) -> KeyPath {
        KeyPath(self.0.iter().chain(&rest.0).cloned().collect())
    }

    /// Whether `prefix` is this path or one of its parents.
    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Line and column, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

pub fn position_of(text: &str, offset: usize) -> Position {
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line,
        column: before[line_start..].chars().count() + 1,
    }
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Where `path` is written: the key's own position, or for a missing key the
/// position of the deepest table that exists (so "missing key" errors point
/// at the table that lacks it).
pub fn locate(text: &str, path: &KeyPath) -> Option<Position> {
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = root.get_ref();
    let mut found = None;
    let mut segments = path.0.iter().peekable();
    while let Some(segment) = segments.next() {
        let Segment::Key(key) = segment else {
            return found;
        };
        let Some((key_span, value)) = table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key.as_str())
            .map(|(k, v)| (k.span(), v))
        else {
            return found;
        };
        found = Some(position_of(text, key_span.start));
        let mut value: &Spanned<DeValue<'_>> = value;
        if let Some(Segment::Index(index)) = segments.peek() {
            segments.next();
            let item = value
                .get_ref()
                .as_array()
                .and_then(|items| items.get(*index));
            let Some(item) = item else {
                return found;
            };
            found = Some(position_of(text, item.span().start));
            value = item;
        }
        match value.get_ref().as_table() {
            Some(inner) => table = inner,
            None => return found,
        }
    }
    found
}

/// The deepest key path whose key or value contains `offset`: names the key
/// of an error that the TOML deserializer reported only by its span. Tables
/// opened by a `[header]` do not span their contents, so every table is
/// searched rather than only those whose span contains the offset.
pub fn key_at(text: &str, offset: usize) -> KeyPath {
    DeTable::parse(text)
        .ok()
        .and_then(|root| find_in_table(root.get_ref(), offset))
        .unwrap_or_default()
}

fn find_in_table(table: &DeTable<'_>, offset: usize) -> Option<KeyPath> {
    table.iter().find_map(|(key, value)| {
        let here = KeyPath::default().key(key.get_ref());
        let inner = find_in_value(value, offset);
        match inner {
            Some(inner) => Some(KeyPath(here.0.into_iter().chain(inner.0).collect())),
            None if key.span().contains(&offset)
                || (!value.get_ref().is_table() && value.span().contains(&offset)) =>
            {
                Some(here)
            }
            None => None,
        }
    })
}

fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize) -> Option<KeyPath> {
    match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, offset),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            let inner = find_in_value(item, offset);
            let here = KeyPath::default().index(index);
            match inner {
                Some(inner) => Some(KeyPath(here.0.into_iter().chain(inner.0).collect())),
                None if item.span().contains(&offset) && !item.get_ref().is_table() => Some(here),
                None => None,
            }
        }),
        _ => None,
    }
}

/// Takes out of `table` the deepest key whose key or value holds `offset`
/// (an array counts as one value), and returns its path from `table`.
pub fn remove_at(table: &mut DeTable<'_>, offset: usize) -> Option<KeyPath> {
    for (key, value) in table.iter_mut() {
        if let DeValue::Table(inner) = value.get_mut() {
            if let Some(inner) = remove_at(inner, offset) {
                return Some(KeyPath::default().key(key.get_ref()).join(&inner));
            }
        }
    }
    let name = table
        .iter()
        .find(|(key, value)| key.span().contains(&offset) || value.span().contains(&offset))
        .map(|(key, _)| key.get_ref().to_string())?;
    table.remove(name.as_str());
    Some(KeyPath::default().key(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nlisten = \"0.0.0.0:8443\"\n\n[sources.tus]\nprovider = \"tusfacturas\"\nrate = \"x\"\n\n[[subscriptions]]\nname = \"a\"\n\n[[subscriptions]]\nname = \"b\"\nurl = \"ftp://x\"\n";

    fn path(parts: &[&str]) -> KeyPath {
        let mut path = KeyPath::default();
        for part in parts {
            path = match part.parse::<usize>() {
                Ok(i) => path.index(i),
                Err(_) => path.key(part),
            };
        }
        path
    }

    #[test]
    fn locates_nested_keys_and_arrays_of_tables() {
        assert_eq!(
            locate(TEXT, &path(&["server", "listen"])).map(|p| p.line),
            Some(2)
        );
        assert_eq!(
            locate(TEXT, &path(&["sources", "tus", "rate"])).map(|p| p.line),
            Some(6)
        );
        assert_eq!(
            locate(TEXT, &path(&["subscriptions", "1", "url"])).map(|p| p.line),
            Some(13)
        );
        assert_eq!(
            path(&["subscriptions", "1", "url"]).to_string(),
            "subscriptions[1].url"
        );
    }

    #[test]
    fn a_missing_key_points_at_its_table() {
        let at = locate(TEXT, &path(&["subscriptions", "0", "url"])).map(|p| p.line);
        assert!(matches!(at, Some(8..=9)), "{at:?}");
    }

    #[test]
    fn finds_the_key_at_an_offset() {
        let offset = TEXT.find("\"x\"").unwrap();
        assert_eq!(key_at(TEXT, offset).to_string(), "sources.tus.rate");
        let offset = TEXT.find("ftp").unwrap();
        assert_eq!(key_at(TEXT, offset).to_string(), "subscriptions[1].url");
    }

    #[test]
    fn removes_the_deepest_key_at_an_offset() {
        let text = "[a]\nx = 1\nb = { c = 2, d = [3, 4] }\n";
        let mut root = DeTable::parse(text).unwrap().into_inner();
        let offset = text.find('4').unwrap();
        assert_eq!(
            remove_at(&mut root, offset).map(|p| p.to_string()),
            Some("a.b.d".to_owned())
        );
        let offset = text.find('x').unwrap();
        assert_eq!(
            remove_at(&mut root, offset).map(|p| p.to_string()),
            Some("a.x".to_owned())
        );
        assert_eq!(
            remove_at(&mut root, text.find('2').unwrap()).map(|p| p.to_string()),
            Some("a.b.c".to_owned())
        );
    }

    #[test]
    fn positions_count_lines_and_columns_from_one() {
        assert_eq!(position_of("a\nbc", 3), Position { line: 2, column: 2 });
        assert_eq!(position_of("ñ", 1), Position { line: 1, column: 1 });
    }
}
