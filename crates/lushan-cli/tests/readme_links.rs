//! Every relative link in the READMEs and in docs/ leads to a file inside the repository, and every `#anchor`
//! to a heading of the page it names: a newcomer's first clicks must not end on a missing page, nor on a path
//! that only exists on the machine the project was written on (`../shared/...`).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The targets of `[text](target)`, `![alt](target)` and `<img src="target">`, outside code spans and blocks.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_code_block = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
            continue;
        }
        if in_code_block {
            continue;
        }
        // Drop inline code spans: `a](b)` inside backticks is not a link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.to_owned());
            rest = &after[end..];
        }
        let mut rest = prose.as_str();
        while let Some(start) = rest.find("src=\"") {
            let after = &rest[start + 5..];
            let end = after.find('"').unwrap_or(after.len());
            targets.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces turned into hyphens.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    let mut in_code_block = false;
    let mut found = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
        } else if !in_code_block && line.starts_with('#') {
            found.push(anchor_of(line.trim_start_matches('#')));
        }
    }
    found
}

/// Problems with the links of one Markdown file, each naming the file and the target.
fn broken_links(root: &Path, file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let name = file.strip_prefix(root).unwrap_or(file).display().to_string();
    let mut problems = Vec::new();
    for target in link_targets(&text) {
        if target.is_empty() {
            problems.push(format!("{name}: an empty link target"));
            continue;
        }
        if target.starts_with("https://") || target.starts_with("http://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, fragment) = match target.split_once('#') {
            Some((path, fragment)) => (path, Some(fragment)),
            None => (target.as_str(), None),
        };
        let page = if path.is_empty() { file.to_path_buf() } else { file.parent().unwrap().join(path) };
        let Ok(resolved) = page.canonicalize() else {
            problems.push(format!("{name}: `{target}` does not exist"));
            continue;
        };
        if !resolved.starts_with(root) {
            problems.push(format!("{name}: `{target}` leads outside the repository"));
            continue;
        }
        if let Some(fragment) = fragment {
            let is_markdown = resolved.extension().is_some_and(|e| e == "md");
            if is_markdown && !anchors(&std::fs::read_to_string(&resolved).unwrap()).iter().any(|a| a == fragment) {
                problems.push(format!("{name}: `{target}` names no heading of {}", resolved.display()));
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_in_the_readmes_and_docs_resolves_inside_the_repository() {
    let root = repo_root();
    let mut files = vec![root.join("README.md"), root.join("README.zh-CN.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut problems = Vec::new();
    for file in &files {
        assert!(file.is_file(), "{} is missing", file.display());
        problems.extend(broken_links(&root, file));
    }
    // The READMEs are read on GitHub and after a clone: a path above the repository (a link or a `code`
    // mention) names something the reader does not have.
    for readme in &files[..2] {
        for (number, line) in std::fs::read_to_string(readme).unwrap().lines().enumerate() {
            if line.contains("../") {
                problems.push(format!("{}:{}: a path outside the repository: {line}", readme.display(), number + 1));
            }
        }
    }
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_finds_missing_outside_and_anchorless_targets() {
    let root = repo_root();
    let dir = tempfile::tempdir_in(root.join("target")).unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(
        &page,
        "# Fine-tuning: classification, chat\n\n## 快速开始\n\n[ok](#fine-tuning-classification-chat) [zh](#快速开始) \
         [gone](missing.md) [out](../../../../) [bad](#nowhere) `[code](not-a-link.md)`\n\
         ```\n[block](also-not-a-link.md)\n```\n",
    )
    .unwrap();
    let problems = broken_links(&root, &page);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("missing.md") && problems[0].contains("does not exist"));
    assert!(problems[1].contains("outside the repository"));
    assert!(problems[2].contains("#nowhere"));
}
