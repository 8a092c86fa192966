#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! The docs name only what exists: every `make` target, `falcon` subcommand, repository path
//! and environment variable that README.md and docs/*.md mention in code is real. A renamed
//! target or a removed setting fails here, not in front of a user.

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;

use crate::common::{falcon, repo};

/// README.md and docs/*.md: (name, text).
fn docs() -> Vec<(String, String)> {
    let root = repo();
    let mut out = vec![("README.md".to_owned(), std::fs::read_to_string(root.join("README.md")).unwrap())];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
            out.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    out
}

/// The code in a Markdown text: inline `spans` and fenced blocks.
fn code(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut block = String::new();
    let spans = Regex::new(r"`([^`]+)`").unwrap();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            if in_block {
                out.push(std::mem::take(&mut block));
            }
            in_block = !in_block;
            continue;
        }
        if in_block {
            block.push_str(line);
            block.push('\n');
        } else {
            out.extend(spans.captures_iter(line).map(|c| c[1].to_owned()));
        }
    }
    out
}

/// Every file's text under the code, scripts and deployment folders: where a setting lives.
fn sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(&path, out);
                }
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                out.push_str(&text);
            }
        }
    }
    let root = repo();
    let mut out = String::new();
    for dir in ["crates", "scripts", "deploy"] {
        walk(&root.join(dir), &mut out);
    }
    for file in ["Makefile", "docker-compose.yml", ".env.example"] {
        out.push_str(&std::fs::read_to_string(root.join(file)).unwrap());
    }
    out
}

#[test]
fn make_targets_named_in_the_docs_exist() {
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let targets: BTreeSet<String> =
        Regex::new(r"(?m)^([a-z][a-z0-9-]*):").unwrap().captures_iter(&makefile).map(|c| c[1].to_owned()).collect();
    let named = Regex::new(r"\bmake ([a-z][a-z0-9-]*)").unwrap();
    let mut missing = Vec::new();
    for (doc, text) in docs() {
        for snippet in code(&text) {
            for c in named.captures_iter(&snippet) {
                if !targets.contains(&c[1]) {
                    missing.push(format!("{doc}: make {}", &c[1]));
                }
            }
        }
    }
    assert!(missing.is_empty(), "targets the Makefile does not have: {missing:?}");
}

#[test]
fn falcon_subcommands_named_in_the_docs_exist() {
    let help = falcon().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands: BTreeSet<String> =
        Regex::new(r"(?m)^  ([a-z]+)  ").unwrap().captures_iter(&help).map(|c| c[1].to_owned()).collect();
    assert!(commands.contains("doctor") && commands.contains("serve"), "{help}");
    // `falcon` in command position: at the start, after a pipe, `;`, `&&` or `(`, or after
    // VAR=value assignments (not `kubectl -n falcon get`).
    let named = Regex::new(r"(?m)(?:^|[|;&(])\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*falcon ([a-z]+)\b").unwrap();
    let mut missing = Vec::new();
    for (doc, text) in docs() {
        for snippet in code(&text) {
            for c in named.captures_iter(&snippet) {
                if !commands.contains(&c[1]) {
                    missing.push(format!("{doc}: falcon {}", &c[1]));
                }
            }
        }
    }
    assert!(missing.is_empty(), "subcommands `falcon --help` does not list: {missing:?}");
}

#[test]
fn repository_paths_named_in_the_docs_exist() {
    let root = repo();
    // Paths the worker creates at run time are defaults in the code.
    let sources = sources();
    let path =
        Regex::new(r"(?:^|[\s`(=])((?:crates|scripts|deploy|docs|models|data)/[A-Za-z0-9_./-]*[A-Za-z0-9_])").unwrap();
    let markdown = Regex::new(r"\b([A-Za-z_-]+\.md)\b").unwrap();
    let mut missing = Vec::new();
    for (doc, text) in docs() {
        for snippet in code(&text) {
            for c in path.captures_iter(&snippet) {
                let p = &c[1];
                if !root.join(p).exists() && !sources.contains(&format!("\"{p}\"")) {
                    missing.push(format!("{doc}: {p}"));
                }
            }
        }
        // A Markdown file named anywhere in the text is one of ours (at the root, in docs/, or
        // make bench's report in bench/).
        for c in markdown.captures_iter(&text) {
            let name = &c[1];
            let ours = ["", "docs", "bench"].iter().any(|dir| root.join(dir).join(name).exists());
            if !ours && !name.contains("RUNBOOK") {
                missing.push(format!("{doc}: {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "paths that do not exist: {missing:?}");
}

#[test]
fn environment_variables_named_in_the_docs_are_read_somewhere() {
    let sources = sources();
    let var = Regex::new(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b").unwrap();
    // Names that are not settings: SQL, psql, systemd and Redis words, and the shell's own.
    let not_settings = ["ON_ERROR_STOP", "CAP_NET_BIND_SERVICE", "NO_COLOR", "RUST_LOG", "TCP_NODELAY"];
    // Settings a library of the worker reads itself: tokio's runtime size.
    let read_by_libraries = ["TOKIO_WORKER_THREADS"];
    let mut missing = BTreeSet::new();
    for (doc, text) in docs() {
        for snippet in code(&text) {
            for c in var.captures_iter(&snippet) {
                let name = &c[1];
                if !not_settings.contains(&name) && !read_by_libraries.contains(&name) && !sources.contains(name) {
                    missing.insert(format!("{doc}: {name}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "variables nothing reads: {missing:?}");
}
