//! The crate's modules import one another without a cycle: each file under `src/` is a module,
//! and a module that names another one (`crate::x::...`, `super::x::...`, `self::x::...`)
//! depends on it. A parent's `pub use self::child::...` re-exports and `mod` declarations are the
//! module tree, not dependencies, and comments do not count.
//!
//! This is the check `cargo modules dependencies --acyclic` makes, written out so that the tests
//! run it without the tool.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The module path of a file: `src/lib.rs` is `crate`, `src/a/mod.rs` and `src/a.rs` are
/// `crate::a`, `src/a/b.rs` is `crate::a::b`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut path = vec!["crate".to_string()];
    for part in relative.iter() {
        let part = part.to_str().unwrap();
        if part != "lib" && part != "mod" {
            path.push(part.to_string());
        }
    }
    path
}

/// The code of a file without its comments and string literals.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if text[i..].starts_with("/*") {
            let end = text[i + 2..]
                .find("*/")
                .map_or(bytes.len(), |e| i + 2 + e + 2);
            i = end;
        } else if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The paths a piece of code names, expanded through braces: `crate::{a::X, b}` names
/// `crate::a::X` and `crate::b`. Returns each as its segments.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let tokens: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < tokens.len() {
        let starts_word = i == 0 || !(tokens[i - 1].is_alphanumeric() || tokens[i - 1] == '_');
        if starts_word {
            for root in ["crate", "super", "self"] {
                let word: Vec<char> = root.chars().collect();
                let end = i + word.len();
                if tokens.get(i..end) == Some(&word[..])
                    && tokens.get(end..end + 2) == Some(&[':', ':'])
                {
                    let (found, _) = expand(&tokens, end + 2, vec![root.to_string()]);
                    paths.extend(found);
                }
            }
        }
        i += 1;
    }
    paths
}

/// Reads a path's tail from `i` (just after a `::`), given its head: identifiers separated by
/// `::`, or a brace group of such tails. Returns the paths and where reading stopped.
fn expand(tokens: &[char], mut i: usize, head: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let skip_space = |mut i: usize| {
        while tokens.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        i
    };
    i = skip_space(i);
    if tokens.get(i) == Some(&'{') {
        let mut found = Vec::new();
        i += 1;
        loop {
            i = skip_space(i);
            match tokens.get(i) {
                Some('}') | None => return (found, i + 1),
                Some(',') => i += 1,
                _ => {
                    let (more, next) = expand(tokens, i, head.clone());
                    found.extend(more);
                    i = next;
                }
            }
        }
    }
    let start = i;
    while tokens
        .get(i)
        .is_some_and(|c| c.is_alphanumeric() || *c == '_')
    {
        i += 1;
    }
    let mut path = head;
    if i > start {
        path.push(tokens[start..i].iter().collect());
    }
    if tokens.get(i..i + 2) == Some(&[':', ':']) {
        return expand(tokens, i + 2, path);
    }
    (vec![path], i)
}

/// The code of a module that can depend on others: without its unit tests (a `#[cfg(test)]`
/// module, last in its file, whose `super` is the module itself), its `mod` declarations and its
/// re-exports of its own children (`pub use self::...;`), which make the module tree.
fn module_code(code: &str) -> String {
    let code = match code.find("#[cfg(test)]\nmod ") {
        Some(tests) => &code[..tests],
        None => code,
    };
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = ["pub use self::", "pub(crate) use self::"]
        .iter()
        .filter_map(|s| rest.find(s))
        .min()
    {
        out.push_str(&rest[..at]);
        rest = rest[at..].split_once(';').map_or("", |(_, after)| after);
    }
    out.push_str(rest);
    out.lines()
        .filter(|line| {
            let line = line.trim();
            let declaration = line
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            !(declaration.starts_with("mod ") && line.ends_with(';'))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn modules_import_one_another_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    assert!(modules.len() > 10, "{modules:?}");

    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let code = code_of(&fs::read_to_string(file).unwrap());
        for path in paths_in(&module_code(&code)) {
            let mut target = match path[0].as_str() {
                "crate" => vec!["crate".to_string()],
                "self" => module.clone(),
                _ => module[..module.len() - 1].to_vec(),
            };
            // The longest module that the path names.
            for segment in &path[1..] {
                let mut next = target.clone();
                next.push(segment.clone());
                if !modules.contains(&next) {
                    break;
                }
                target = next;
            }
            if target != module && modules.contains(&target) {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }

    // Depth-first search for a back edge.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, bool>,
        stack: &mut Vec<Vec<String>>,
    ) {
        match state.get(node) {
            Some(true) => return,
            Some(false) => {
                let at = stack.iter().position(|n| n == node).unwrap();
                let cycle: Vec<String> = stack[at..].iter().map(|n| n.join("::")).collect();
                panic!(
                    "import cycle: {} -> {}",
                    cycle.join(" -> "),
                    node.join("::")
                );
            }
            None => {}
        }
        state.insert(node.clone(), false);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, state, stack);
        }
        stack.pop();
        state.insert(node.clone(), true);
    }
    let mut state = BTreeMap::new();
    for module in &modules {
        visit(module, &edges, &mut state, &mut Vec::new());
    }
    // The check sees the imports it must: the service depends on the walk, the walk on the
    // per-endpoint state.
    let walker = vec!["crate".to_string(), "walker".to_string()];
    let service = vec!["crate".to_string(), "service".to_string()];
    let state_module = vec!["crate".to_string(), "state".to_string()];
    assert!(edges[&service].contains(&walker), "{edges:?}");
    assert!(edges[&walker].contains(&state_module), "{edges:?}");
}

#[test]
fn the_cycle_check_reads_paths_through_braces() {
    let paths = paths_in("use crate::{a::{B, c::D}, e}; let x = super::f::g();");
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        ["crate::a::B", "crate::a::c::D", "crate::e", "super::f::g"]
    );
}
