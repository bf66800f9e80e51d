//! The map in ARCHITECTURE.md, checked: no two files of the library depend on each other
//! (directly or around a loop), src/limits.rs depends on no format, and a format depends only
//! on the core, the resolver and its own folder.
//!
//! A file depends on another when it names it in a `use` or a `crate::`/`super::` path outside
//! its tests. Re-exports (`pub use`) are the face of a module, not a dependency of it, and the
//! crate root (lib.rs) is only a face.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every library file, by module path (`formats/qcow2/reader` is `["formats", "qcow2", "reader"]`).
fn modules() -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            out.insert(parts, std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// The text that counts: without tests, comments and re-exports.
fn code(text: &str) -> String {
    let mut kept = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().contains("mod tests"))
        {
            // Test modules close the file in this crate.
            break;
        }
        let line = line.split("//").next().unwrap_or("");
        kept.push_str(line);
        kept.push('\n');
    }
    // Drop `pub use ...;` and `pub(crate) use ...;` statements.
    let mut out = String::new();
    let mut rest = kept.as_str();
    while let Some(at) = rest.find("pub") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let tail = after
            .strip_prefix("pub(crate)")
            .or_else(|| after.strip_prefix("pub"))
            .unwrap_or(after);
        if tail.trim_start().starts_with("use ")
            && let Some(end) = tail.find(';')
        {
            rest = &tail[end + 1..];
        } else {
            out.push_str("pub");
            rest = &after[3..];
        }
    }
    out.push_str(rest);
    out
}

/// The paths a file names: each `use` tree expanded, and each `crate::`/`super::` path.
fn named_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let boundary = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let after = &rest[at + 4..];
        match after.find(';') {
            Some(end) if boundary => {
                let tree: String = after[..end]
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                expand(&tree, &mut out);
                rest = &after[end + 1..];
            }
            _ => rest = after,
        }
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric() || matches!(bytes[at - 1], b'_' | b':'))
            {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            out.push(code[at..end].trim_end_matches(':').to_string());
        }
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str, out: &mut Vec<String>) {
    let Some(open) = tree.find('{') else {
        out.push(tree.to_string());
        return;
    };
    let prefix = &tree[..open];
    let inner = tree[open + 1..]
        .strip_suffix('}')
        .unwrap_or(&tree[open + 1..]);
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&format!("{prefix}{}", &inner[start..i]), out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        expand(&format!("{prefix}{}", &inner[start..]), out);
    }
}

/// The file a path named in `from` leads to, if it is one of the library's.
fn target(from: &Module, path: &str, modules: &BTreeMap<Module, String>) -> Option<Module> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Module = match segs.first() {
        Some(&"crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some(&"super") => {
            let mut b = from.clone();
            while segs.first() == Some(&"super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        Some(&"self") => {
            segs.remove(0);
            from.clone()
        }
        Some(first) => {
            let mut child = from.clone();
            child.push(first.to_string());
            if !modules.contains_key(&child) {
                return None;
            }
            from.clone()
        }
        None => return None,
    };
    base.extend(segs.iter().map(|s| s.to_string()));
    (0..=base.len())
        .rev()
        .map(|k| base[..k].to_vec())
        .find(|m| modules.contains_key(m))
        .filter(|m| !m.is_empty() && m != from)
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules();
    let mut edges = BTreeMap::new();
    for (module, text) in &modules {
        let deps: BTreeSet<Module> = named_paths(&code(text))
            .iter()
            .filter_map(|p| target(module, p, &modules))
            .collect();
        edges.insert(module.clone(), deps);
    }
    edges
}

/// The groups of files that depend on each other around a loop.
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    // Two files are in one group when each reaches the other.
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for d in edges.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&Module, BTreeSet<Module>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut groups: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, r) in &reaches {
        let group: Vec<String> = r
            .iter()
            .filter(|o| reaches.get(o).is_some_and(|back| back.contains(*m)))
            .map(|o| o.join("/"))
            .collect();
        if !group.is_empty() {
            groups.insert(group);
        }
    }
    groups.into_iter().collect()
}

#[test]
fn no_file_depends_on_itself_around_a_loop() {
    let found = cycles(&graph());
    assert!(found.is_empty(), "import cycles: {found:?}");
}

#[test]
fn the_checker_finds_a_loop() {
    let m = |s: &str| -> Module { s.split('/').map(str::to_string).collect() };
    let mut edges = BTreeMap::new();
    edges.insert(m("a"), BTreeSet::from([m("b")]));
    edges.insert(m("b"), BTreeSet::from([m("c")]));
    edges.insert(m("c"), BTreeSet::from([m("a")]));
    edges.insert(m("d"), BTreeSet::from([m("a")]));
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
    let mut out = Vec::new();
    expand("super::x::{A,y::{B,C}}", &mut out);
    assert_eq!(out, ["super::x::A", "super::x::y::B", "super::x::y::C"]);
    let code = code(
        "pub use a::b;\nuse crate::x::Y; // crate::z\n#[cfg(test)]\nmod tests {\nuse crate::w;\n}\n",
    );
    assert_eq!(named_paths(&code), ["crate::x::Y", "crate::x::Y"]);
}

#[test]
fn limits_depend_on_no_format() {
    let edges = graph();
    let deps = &edges[&vec!["limits".to_string()]];
    assert!(
        deps.iter()
            .all(|d| d.first().is_none_or(|f| f != "formats")),
        "src/limits.rs depends on {deps:?}"
    );
}

#[test]
fn a_format_uses_only_the_core_the_resolver_and_its_own_folder() {
    const ALLOWED: [&str; 11] = [
        "block",
        "cache",
        "cluster_set",
        "compress",
        "error",
        "io",
        "limits",
        "mapped",
        "resolve",
        "storage",
        "formats",
    ];
    for (module, deps) in graph() {
        if module.first().is_none_or(|f| f != "formats") || module.len() < 2 {
            continue;
        }
        for dep in deps {
            let ok = match dep.first().map(String::as_str) {
                // The format enum and the typed info are shared by every format.
                Some("formats") => dep.len() == 1 || dep[1] == module[1] || dep[1] == "info",
                Some(top) => ALLOWED.contains(&top),
                None => false,
            };
            assert!(ok, "{} depends on {}", module.join("/"), dep.join("/"));
        }
    }
}
