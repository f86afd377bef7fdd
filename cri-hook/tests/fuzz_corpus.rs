//! Replays the fuzz corpus, `tests/fuzz-corpus/<target>/` at the workspace root, through the
//! same checks as `fuzz_parsers.rs`: valid seeds and the nasty inputs found so far. Nothing
//! may panic and every property must hold; in addition a file named `ok-*` must be accepted
//! and one named `bad-*` refused (other names only must not break anything).
//!
//! How each target reads a file is in [`replay`]; the corpus README says the same.

mod fuzzing;

use std::collections::BTreeMap;

use fuzzing::{Checked, Verdict};

/// Every corpus target, in directory order.
const TARGETS: [&str; 10] = [
    "cli-annotations",
    "cli-argv",
    "cni-args",
    "cni-conf",
    "config-toml",
    "nri-sandbox",
    "oci-state",
    "pod-name",
    "pod-options",
    "publish",
];

fn lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    text.split('\n').map(str::to_string).collect()
}

/// Feeds one corpus file to its target.
fn replay(target: &str, file: &str, bytes: &[u8]) -> Checked {
    let json = |what: &str| format!("{target}/{file} is not {what}");
    match target {
        "pod-name" => fuzzing::check_pod_name(bytes),
        "config-toml" => fuzzing::check_config(bytes),
        "publish" if file.ends_with(".list") => fuzzing::check_publish(&lines(bytes)),
        "publish" => fuzzing::check_publish(&[String::from_utf8_lossy(bytes).into_owned()]),
        "cli-annotations" => fuzzing::check_cli_annotations(&lines(bytes)),
        "pod-options" => fuzzing::check_pod_options(
            &serde_json::from_slice::<BTreeMap<String, String>>(bytes)
                .unwrap_or_else(|_| panic!("{}", json("a JSON object of strings"))),
        ),
        "nri-sandbox" => fuzzing::check_sandbox(
            &serde_json::from_slice(bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", json("a sandbox description"))),
        ),
        "oci-state" => fuzzing::check_oci_state(bytes),
        "cni-conf" => fuzzing::check_cni_conf(bytes),
        "cni-args" => fuzzing::check_cni_args(&String::from_utf8_lossy(bytes)),
        "cli-argv" => fuzzing::check_cli_argv(
            &serde_json::from_slice::<Vec<String>>(bytes)
                .unwrap_or_else(|_| panic!("{}", json("a JSON array of strings"))),
        ),
        other => panic!("unknown corpus target {other}"),
    }
}

#[test]
fn corpus_replays_cleanly() {
    let root = fuzzing::corpus_root();
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type()
                .ok()?
                .is_dir()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    dirs.sort();
    assert_eq!(dirs, TARGETS, "corpus directories and targets differ");

    let mut failures = Vec::new();
    let mut total = 0;
    for target in TARGETS {
        let files = fuzzing::corpus(target);
        assert!(
            files.len() >= 3,
            "corpus {target} has only {} files",
            files.len()
        );
        for (file, bytes) in files {
            total += 1;
            let verdict = match replay(target, &file, &bytes) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("{target}/{file}: property violated: {e}"));
                    continue;
                }
            };
            let accepted = verdict == Verdict::Accepted;
            if !file.starts_with("ok-") && !file.starts_with("bad-") {
                // No expectation: show what the parser makes of it.
                let shown: String = match &verdict {
                    Verdict::Accepted => "accepted".into(),
                    Verdict::Refused(m) => {
                        format!("refused: {}", m.chars().take(160).collect::<String>())
                    }
                };
                eprintln!("fuzz corpus {target}/{file}: {shown}");
            }
            if file.starts_with("ok-") && !accepted {
                failures.push(format!("{target}/{file}: refused: {verdict:?}"));
            }
            if file.starts_with("bad-") && accepted {
                failures.push(format!("{target}/{file}: accepted"));
            }
        }
    }
    eprintln!("fuzz corpus: {total} files replayed");
    assert!(
        failures.is_empty(),
        "corpus failures:\n{}",
        failures.join("\n")
    );
}
