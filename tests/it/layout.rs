//! The source tree's layout, checked: no import cycle between modules.
//!
//! A module may use its parent and its children (that is how a folder's
//! `mod.rs` and its files work together), but between siblings, and
//! between the folders that hold them, imports point one way only
//! (`../shared/DESIGN.md`: dependencies point down). Read from the source
//! text: every `use` and every `crate::…`/`super::…` path outside
//! comments, resolved to the deepest module that exists. Test modules
//! (`tests.rs`, `*_tests.rs`) are left out: they look at everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

#[test]
fn no_module_imports_a_sibling_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = library_files(&src);
    let modules: BTreeSet<Module> = files.keys().cloned().collect();
    let mut edges: BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        for (reference, used_as) in references(&without_comments(&text)) {
            let Some(target) = resolve(module, &reference, &modules) else {
                continue;
            };
            if let Some((from, to)) = between_siblings(module, &target) {
                edges
                    .entry(from)
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(format!("{} -> {}", display(module), used_as));
            }
        }
    }
    let cycles = cycles(&edges);
    let report: Vec<String> = cycles
        .iter()
        .map(|cycle| {
            let mut lines = vec![format!(
                "cycle: {}",
                cycle.iter().map(display).collect::<Vec<_>>().join(", ")
            )];
            for from in cycle {
                for (to, why) in &edges[from] {
                    if cycle.contains(to) {
                        let why: Vec<&String> = why.iter().take(3).collect();
                        lines.push(format!("  {} -> {}: {why:?}", display(from), display(to)));
                    }
                }
            }
            lines.join("\n")
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles between modules:\n{}",
        report.join("\n")
    );
    // The check reads what it should: the tree has dozens of modules and
    // the spool is imported from above.
    assert!(files.len() > 50, "{} modules read", files.len());
    assert!(edges
        .get(&vec!["ingress".to_owned()])
        .is_some_and(|to| to.contains_key(&vec!["spool".to_owned()])));
}

#[test]
fn the_cycle_check_finds_a_cycle_between_siblings_and_between_folders() {
    let modules: BTreeSet<Module> = ["a", "a::x", "a::y", "b", "b::z"]
        .iter()
        .map(|m| parse_module(m))
        .collect();
    let a_x = parse_module("a::x");
    let found = resolve(&a_x, "super::y::Thing", &modules);
    assert_eq!(found, Some(parse_module("a::y")));
    assert_eq!(
        between_siblings(&a_x, &parse_module("b::z")),
        Some((parse_module("a"), parse_module("b")))
    );
    assert_eq!(between_siblings(&a_x, &parse_module("a")), None);
    let mut edges: BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> = BTreeMap::new();
    for (from, to) in [("a::x", "a::y"), ("a::y", "a::x"), ("a", "b")] {
        edges
            .entry(parse_module(from))
            .or_default()
            .insert(parse_module(to), BTreeSet::new());
    }
    assert_eq!(
        cycles(&edges),
        vec![vec![parse_module("a::x"), parse_module("a::y")]]
    );
    let used = references("use super::{y::{self, Thing}, z as w};\nlet v = crate::b::z::f();");
    let paths: Vec<&str> = used.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["super::y", "super::y::Thing", "super::z", "crate::b::z::f"]
    );
}

fn parse_module(text: &str) -> Module {
    text.split("::").map(str::to_owned).collect()
}

fn display(module: &Module) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// The library's modules and their files: everything under `src/` but the
/// binaries and test modules.
fn library_files(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut files = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(src).unwrap();
            if path.is_dir() {
                if relative != Path::new("bin") {
                    stack.push(path);
                }
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if path.extension().is_none_or(|e| e != "rs")
                || relative == Path::new("main.rs")
                || stem == "tests"
                || stem.ends_with("_tests")
            {
                continue;
            }
            let mut module: Module = relative
                .parent()
                .unwrap()
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if stem != "mod" && stem != "lib" {
                module.push(stem.to_owned());
            }
            files.insert(module, path);
        }
    }
    files
}

/// The text with `//` comments and `/* */` comments blanked, and the
/// contents of string literals dropped (so prose cannot look like a path).
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                out.push(' ');
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if !escaped && c == '"' {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' must not open a string.
            '\'' => {
                out.push(c);
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\"'") || rest.starts_with("\\\"'") {
                    let skip = if rest.starts_with('\\') { 3 } else { 2 };
                    for _ in 0..skip {
                        chars.next();
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path the text refers to that starts at `crate` or `super`, with
/// `use` trees expanded; each with how it was written.
fn references(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let words: Vec<(usize, &str)> = text
        .match_indices(|c: char| !(c.is_alphanumeric() || c == '_'))
        .scan(0, |start, (at, sep)| {
            let word = (*start, &text[*start..at]);
            *start = at + sep.len();
            Some(word)
        })
        .collect();
    let mut covered_until = 0;
    for (at, word) in words {
        if at < covered_until {
            continue;
        }
        if word == "use" {
            let Some(end) = text[at..].find(';') else {
                continue;
            };
            let tree = without_aliases(&text[at + 3..at + end]);
            for path in expand_use(&tree) {
                if path.starts_with("crate::") || path.starts_with("super::") {
                    found.push((path.clone(), path));
                }
            }
            covered_until = at + end;
        } else if (word == "crate" || word == "super") && text[at + word.len()..].starts_with("::")
        {
            let len = text[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(text.len() - at);
            let path = text[at..at + len].trim_end_matches(':').to_owned();
            covered_until = at + len;
            found.push((path.clone(), path));
        }
    }
    found
}

/// A `use` tree without white space and without its `as` renames.
fn without_aliases(tree: &str) -> String {
    let mut out = String::new();
    let mut tokens = tree.split_whitespace();
    while let Some(token) = tokens.next() {
        if token == "as" {
            // The alias, but not the punctuation glued to it (`w},`).
            if let Some(alias) = tokens.next() {
                out.push_str(alias.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
            }
        } else {
            out.push_str(token);
        }
    }
    out
}

/// `a::{b, c::{d, self}}` as `a::b`, `a::c::d`, `a::c`.
fn expand_use(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.trim_end_matches("::*").to_owned()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|part| !part.is_empty())
        .flat_map(|part| {
            if part == "self" {
                vec![prefix.to_owned()]
            } else {
                expand_use(part)
                    .into_iter()
                    .map(|rest| format!("{prefix}::{rest}"))
                    .collect()
            }
        })
        .collect()
}

/// The deepest known module a path reaches, from `module`.
fn resolve(module: &Module, path: &str, modules: &BTreeSet<Module>) -> Option<Module> {
    let mut segments = path.split("::");
    let mut at: Module = match segments.next()? {
        "crate" => Vec::new(),
        // A file's folder, or a folder root's parent: one up either way.
        "super" => {
            let mut up = module.clone();
            up.pop()?;
            up
        }
        _ => return None,
    };
    for segment in segments {
        if segment == "super" {
            at.pop()?;
            continue;
        }
        let mut deeper = at.clone();
        deeper.push(segment.to_owned());
        if modules.contains(&deeper) {
            at = deeper;
        } else {
            break;
        }
    }
    modules.contains(&at).then_some(at)
}

/// The two siblings (children of their nearest common module) that an
/// import from `from` into `to` ties together; none between a module and
/// its own ancestors or descendants.
fn between_siblings(from: &Module, to: &Module) -> Option<(Module, Module)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

/// The strongly connected groups of more than one module (Tarjan), each
/// sorted, in order.
fn cycles(edges: &BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a Module) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.edges.get(node).into_iter().flat_map(|e| e.keys()) {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut group = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    group.push(member.clone());
                    if member == node {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found.sort();
    walk.found
}
