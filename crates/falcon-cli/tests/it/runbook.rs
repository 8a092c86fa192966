#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! docs/runbook.md, executed: every `sh native` block runs, in order, against a native stack
//! (nginx, three workers, Redis, Postgres) with the stack's real ports put in for the
//! document's 8088 and 8000–8002. Each must exit 0 (or a code its `# exit:` line lists) and
//! print what its `# expect:` lines say (and nothing an `# expect-not:` line forbids). The
//! blocks for other deployments, and those that run until interrupted, are listed as
//! skipped with the reason, and each is syntax-checked with `bash -n`.

use std::path::Path;
use std::process::Command;

use regex::Regex;

use crate::common::repo;
use crate::common::stack::Stack;

struct Block {
    kind: String,
    line: usize,
    text: String,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in doc.lines().enumerate() {
        match current.as_mut() {
            None => {
                if let Some(kind) = line.strip_prefix("```sh ") {
                    current = Some(Block { kind: kind.trim().to_owned(), line: i + 1, text: String::new() });
                } else {
                    assert!(line.trim() != "```sh", "line {}: a sh block without a kind (native, compose, …)", i + 1);
                }
            }
            Some(block) => {
                if line.trim_end() == "```" {
                    out.extend(current.take());
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
        }
    }
    assert!(current.is_none(), "an unclosed code block");
    out
}

fn skip_reason(kind: &str) -> &'static str {
    match kind {
        "compose" => "needs docker and the compose stack",
        "systemd" => "needs systemd with falcon-inference.service installed",
        "k8s" => "needs kubectl and a cluster",
        "interactive" => "runs until interrupted (follows logs or watches)",
        "slow" => "retrains the model (~40 s in a debug build); the training tests cover `falcon train`",
        other => panic!("unknown block kind `{other}`: native, compose, systemd, k8s, interactive or slow"),
    }
}

/// The document's ports, as whole words, replaced by the stack's.
fn localise(text: &str, stack: &Stack) -> String {
    let [w1, w2, w3] = stack.ctl.worker_ports;
    let ports = [("8088", stack.ctl.nginx_port), ("8000", w1), ("8001", w2), ("8002", w3)];
    let mut out = text.to_owned();
    for (from, to) in ports {
        let re = Regex::new(&format!(r"\b{from}\b")).unwrap();
        out = re.replace_all(&out, to.to_string().as_str()).into_owned();
    }
    out
}

fn directives<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.trim().strip_prefix(key)).map(str::trim).collect()
}

fn syntax_ok(text: &str) -> Result<(), String> {
    let out = Command::new("bash").args(["-n", "-c", text]).output().unwrap();
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

#[test]
fn every_runnable_command_of_the_runbook_works_on_the_native_stack() {
    let doc = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let all = blocks(&doc);
    let native: Vec<&Block> = all.iter().filter(|b| b.kind == "native").collect();
    // The doctor is step 0 of the quick check and of each of the six incidents.
    let doctor_steps = native.iter().filter(|b| b.text.contains("falcon doctor --stack native")).count();
    assert!(doctor_steps >= 7, "falcon doctor in {doctor_steps} native blocks");
    for n in 1..=6 {
        assert!(doc.contains(&format!("## Incident #{n}:")), "incident #{n} missing");
    }

    let mut skipped = Vec::new();
    for b in all.iter().filter(|b| b.kind != "native") {
        let reason = skip_reason(&b.kind);
        if let Err(e) = syntax_ok(&b.text) {
            panic!("docs/runbook.md:{}: `{}` block is not valid shell: {e}", b.line, b.kind);
        }
        skipped.push(format!("docs/runbook.md:{} ({}): skipped, {reason}", b.line, b.kind));
    }

    let stack = Stack::up();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_falcon")).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let scratch = tempfile::tempdir().unwrap();
    let mut commands = 0;
    for b in &native {
        let script = localise(&b.text, &stack);
        commands += script.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).count();
        let out = Command::new("bash")
            .args(["-c", &format!("set -eo pipefail\n{script}")])
            .current_dir(repo())
            .env_clear()
            .env("PATH", &path)
            .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .env("STACK_DIR", &stack.ctl.dir)
            .env("TMPDIR", scratch.path())
            .env("DOCTOR_INTERVAL_SECONDS", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code().unwrap_or(-1);
        let allowed: Vec<i32> = directives(&script, "# exit:")
            .iter()
            .flat_map(|l| l.split_whitespace().map(|c| c.parse::<i32>().unwrap()))
            .collect();
        let allowed = if allowed.is_empty() { vec![0] } else { allowed };
        let context = format!("docs/runbook.md:{}:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", b.line);
        assert!(allowed.contains(&code), "exit {code}, expected one of {allowed:?}: {context}");
        for expect in directives(&script, "# expect:") {
            let re = Regex::new(&format!("(?m){expect}")).unwrap();
            assert!(re.is_match(&stdout), "no line matches `{expect}`: {context}");
        }
        for forbid in directives(&script, "# expect-not:") {
            let re = Regex::new(&format!("(?m){forbid}")).unwrap();
            assert!(!re.is_match(&stdout), "a line matches `{forbid}`: {context}");
        }
    }
    let mut summary = format!(
        "docs/runbook.md: {} native blocks ({commands} commands) ran; {} skipped:\n",
        native.len(),
        skipped.len()
    );
    for s in &skipped {
        summary.push_str(&format!("  {s}\n"));
    }
    print!("{summary}");
    // The test's output is captured; `make test` prints the notes after the run, so the skips
    // show in CI's log.
    crate::common::leave_note("runbook", &summary);
}

#[test]
fn the_block_parser_reads_kinds_and_directives() {
    let doc = "text\n```sh native\necho hi\n# expect: hi\n```\n```sh compose\ndocker ps\n```\n";
    let b = blocks(doc);
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].kind.as_str(), b[0].line), ("native", 2));
    assert_eq!(directives(&b[0].text, "# expect:"), ["hi"]);
    assert!(syntax_ok("if then fi").is_err());
    assert!(syntax_ok(&b[1].text).is_ok());
}
