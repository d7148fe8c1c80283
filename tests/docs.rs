//! The documentation holds together: the README stays a front door, and every page it leads to
//! can be reached and points at things that exist.
//!
//! Guarantees checked on `README.md` and every `docs/**/*.md`:
//! - `README.md` is at most [`README_MAX_BYTES`] and still shows the two commands CI and a new
//!   user run (`cargo run --release -- run`, `cargo test --release`);
//! - every relative link and image (`[text](path)`, `![alt](path)`, `[id]: path`,
//!   `<img src="path">`) names a file or folder that exists, relative to the page;
//! - a link with a `#fragment` into a Markdown page names a heading of that page (GitHub's
//!   heading ids: lower case, punctuation dropped, spaces to hyphens, `-1`, `-2` for repeats);
//! - every picture is one of the committed golden files under `tests/golden/` that a test
//!   regenerates and compares (`FERROSCOPE_BLESS=1`), so no picture can go stale;
//! - every page under `docs/` is reachable from the README by links.
//!
//! Links inside fenced code blocks, inline code and HTML comments are not links. External
//! links (`https:`, `mailto:` …) are not fetched.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

/// Largest README, bytes: a front door (what, for whom, two commands, results, links); the
/// detail lives under `docs/`.
const README_MAX_BYTES: u64 = 15_360;

/// Where every picture in the docs lives: golden files that a test renders and compares.
const PICTURES_DIR: &str = "tests/golden";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A link found in a page: its target as written and whether it is an image.
#[derive(Debug, PartialEq)]
struct Link {
    target: String,
    image: bool,
    line: usize,
}

/// The page's text with fenced code blocks, HTML comments and inline code blanked out (line
/// structure kept, so line numbers stay right).
fn prose(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<String> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let marker: String = trimmed.chars().take_while(|&c| c == '`' || c == '~').collect();
        match &fence {
            Some(open) => {
                if marker.len() >= open.len()
                    && marker.starts_with(&open[..1])
                    && trimmed[marker.len()..].trim().is_empty()
                {
                    fence = None;
                }
                out.push_str(if line.ends_with('\n') { "\n" } else { "" });
            }
            None if marker.len() >= 3 && (marker.chars().all(|c| c == '`') || marker.chars().all(|c| c == '~')) => {
                fence = Some(marker);
                out.push_str(if line.ends_with('\n') { "\n" } else { "" });
            }
            None => out.push_str(line),
        }
    }
    blank_comments(&blank_code_spans(&out))
}

/// Inline code spans (a run of backticks up to the next run of the same length) blanked.
fn blank_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = chars.clone();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let r = chars[j..].iter().take_while(|&&c| c == '`').count();
                if r == run {
                    close = Some(j);
                    break;
                }
                j += r;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                for c in &mut out[i..j + run] {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
                i = j + run;
            }
            None => i += run,
        }
    }
    out.into_iter().collect()
}

/// HTML comments blanked.
fn blank_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("-->").map_or(rest.len(), |e| start + e + 3);
        out.extend(rest[start..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every link and image of a page.
fn links(text: &str) -> Vec<Link> {
    let text = prose(text);
    let line_of = |byte: usize| text[..byte].matches('\n').count() + 1;
    let mut found = Vec::new();
    // Inline: `](target)` or `](target "title")`, with balanced parentheses in the target.
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("](") {
        let open = from + at;
        let start = open + 2;
        let mut depth = 1;
        let mut end = start;
        while end < bytes.len() && depth > 0 {
            match bytes[end] {
                b'(' => depth += 1,
                b')' => depth -= 1,
                b'\n' => break,
                _ => {}
            }
            if depth > 0 {
                end += 1;
            }
        }
        if depth == 0 {
            let inner = text[start..end].trim();
            let target = inner
                .trim_start_matches('<')
                .split(['>', ' '])
                .next()
                .unwrap_or("")
                .to_string();
            let image = text[..open].rfind('[').is_some_and(|b| b > 0 && bytes[b - 1] == b'!');
            found.push(Link {
                target,
                image,
                line: line_of(open),
            });
        }
        from = start;
    }
    // Reference definitions: `[id]: target` at the start of a line.
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') && !t.starts_with("[^") {
            if let Some(close) = t.find("]:") {
                let target = t[close + 2..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_matches(['<', '>']);
                if !target.is_empty() {
                    found.push(Link {
                        target: target.to_string(),
                        image: false,
                        line: line_of(offset),
                    });
                }
            }
        }
        offset += line.len();
    }
    // HTML images: `<img ... src="target">`.
    let mut from = 0;
    while let Some(at) = text[from..].find("<img") {
        let open = from + at;
        let tag_end = text[open..].find('>').map_or(text.len(), |e| open + e);
        let tag = &text[open..tag_end];
        if let Some(s) = tag.find("src=") {
            let quoted = &tag[s + 4..];
            let q = quoted.chars().next().unwrap_or('"');
            let target = quoted.trim_start_matches(q).split(q).next().unwrap_or("").to_string();
            found.push(Link {
                target,
                image: true,
                line: line_of(open),
            });
        }
        from = open + 4;
    }
    found.sort_by_key(|l| l.line);
    found
}

/// GitHub's id for a heading's text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The ids of a page's headings, repeats numbered as GitHub does.
fn heading_ids(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut ids = BTreeSet::new();
    let mut fence = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fence = !fence;
            continue;
        }
        let hashes = t.chars().take_while(|&c| c == '#').count();
        if fence || hashes == 0 || hashes > 6 || !t[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(t[hashes..].trim().trim_end_matches('#'));
        let n = seen.entry(base.clone()).or_insert(0);
        ids.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    ids
}

/// `%20` and friends in a link target.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a/b/../c` → `a/c`, without touching the file system; `None` when it climbs above the
/// repository root.
fn normalise(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

fn is_external(target: &str) -> bool {
    let scheme: String = target
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "+.-".contains(*c))
        .collect();
    !scheme.is_empty() && target[scheme.len()..].starts_with(':')
}

/// What is wrong with one page's links (empty: nothing). `page` is relative to `root`.
/// Returns the problems and the Markdown pages it links to.
fn check_page(root: &Path, page: &Path) -> (Vec<String>, Vec<PathBuf>) {
    let text = std::fs::read_to_string(root.join(page)).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let dir = page.parent().unwrap_or(Path::new(""));
    let mut problems = Vec::new();
    let mut pages = Vec::new();
    for link in links(&text) {
        let at = format!("{}:{}: ({})", page.display(), link.line, link.target);
        if link.target.is_empty() {
            problems.push(format!("{at} empty link target"));
            continue;
        }
        if is_external(&link.target) {
            if link.image {
                problems.push(format!(
                    "{at} an external picture; pictures are committed under {PICTURES_DIR}/"
                ));
            }
            continue;
        }
        let (path, fragment) = match link.target.split_once('#') {
            Some((p, f)) => (percent_decode(p), Some(percent_decode(f))),
            None => (percent_decode(&link.target), None),
        };
        if path.starts_with('/') {
            problems.push(format!("{at} an absolute path; links are relative to the page"));
            continue;
        }
        let target = if path.is_empty() {
            Some(page.to_path_buf())
        } else {
            normalise(&dir.join(&path))
        };
        let Some(target) = target else {
            problems.push(format!("{at} leaves the repository"));
            continue;
        };
        let full = root.join(&target);
        if !full.exists() {
            problems.push(format!("{at} no such file: {}", target.display()));
            continue;
        }
        if link.image {
            if !target.starts_with(PICTURES_DIR) {
                problems.push(format!(
                    "{at} pictures are golden files a test regenerates, under {PICTURES_DIR}/ (not {})",
                    target.display()
                ));
            }
            if !full.is_file() {
                problems.push(format!("{at} not a file"));
            }
        }
        let markdown = target.extension().is_some_and(|e| e == "md");
        if let Some(f) = fragment.filter(|f| !f.is_empty()) {
            if markdown {
                let ids = heading_ids(&std::fs::read_to_string(&full).unwrap_or_default());
                if !ids.contains(&f) {
                    problems.push(format!("{at} {} has no heading with the id #{f}", target.display()));
                }
            }
        }
        if markdown {
            pages.push(target);
        }
    }
    (problems, pages)
}

/// Every Markdown file under `docs/`, relative to the root.
fn doc_pages(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        for name in entries {
            let p = dir.join(&name);
            if root.join(&p).is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|e| e == "md") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new("docs"), &mut out);
    out
}

#[test]
fn readme_is_a_front_door() {
    let path = root().join("README.md");
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(
        size <= README_MAX_BYTES,
        "README.md is {size} bytes, over {README_MAX_BYTES}: move the detail into docs/ and link it"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for command in ["cargo run --release -- run", "cargo test --release"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(command)),
            "README.md: the command `{command}` is not on a line of its own"
        );
    }
}

#[test]
fn every_link_and_picture_resolves_and_every_page_is_reachable() {
    let root = root();
    let docs = doc_pages(&root);
    assert!(!docs.is_empty(), "no pages under docs/");
    let mut problems = Vec::new();
    let mut linked: BTreeSet<PathBuf> = BTreeSet::new();
    let mut edges: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
    for page in std::iter::once(PathBuf::from("README.md")).chain(docs.iter().cloned()) {
        let (p, targets) = check_page(&root, &page);
        problems.extend(p);
        linked.extend(targets.iter().cloned());
        edges.insert(page, targets);
    }
    // Reachable from the README.
    let mut reached: BTreeSet<PathBuf> = BTreeSet::new();
    let mut todo = vec![PathBuf::from("README.md")];
    while let Some(p) = todo.pop() {
        if reached.insert(p.clone()) {
            todo.extend(edges.get(&p).into_iter().flatten().cloned());
        }
    }
    for page in &docs {
        if !reached.contains(page) {
            problems.push(format!(
                "{}: no chain of links leads to it from README.md",
                page.display()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// The checker itself, on pages made for it: it must find what is wrong, not only pass.

#[test]
fn links_are_found_where_they_are_links_and_only_there() {
    let page = "see [a](one.md) and ![p](two.png \"title\")\n\
                ```sh\n[not](a-link.md)\n```\n\
                `[not](code.md)` <!-- [not](comment.md) -->\n\
                [ref]: three.md\n\
                <img alt=\"x\" src=\"four.png\">\n\
                [paren](five_(x).md#sec)\n";
    let found: Vec<(String, bool)> = links(page).into_iter().map(|l| (l.target, l.image)).collect();
    assert_eq!(
        found,
        vec![
            ("one.md".to_string(), false),
            ("two.png".to_string(), true),
            ("three.md".to_string(), false),
            ("four.png".to_string(), true),
            ("five_(x).md#sec".to_string(), false),
        ]
    );
}

#[test]
fn heading_ids_follow_github() {
    let ids = heading_ids(
        "# Backends (`[display]` in the board profile)\n## Which file `run` uses\n### Speed\n## Speed\n\
         ```\n# not a heading\n```\n## Grains: metallographic grain size (GOST 5639-82, ASTM E112)\n",
    );
    for id in [
        "backends-display-in-the-board-profile",
        "which-file-run-uses",
        "speed",
        "speed-1",
        "grains-metallographic-grain-size-gost-5639-82-astm-e112",
    ] {
        assert!(ids.contains(id), "{id} not in {ids:?}");
    }
    assert!(!ids.contains("not-a-heading"));
}

#[test]
fn broken_links_missing_pictures_and_bad_fragments_are_reported() {
    let dir = std::env::temp_dir().join(format!("ferroscope-docs-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("docs/sub")).unwrap();
    std::fs::create_dir_all(dir.join("tests/golden")).unwrap();
    std::fs::write(dir.join("tests/golden/s.png"), b"png").unwrap();
    std::fs::write(dir.join("elsewhere.png"), b"png").unwrap();
    std::fs::write(dir.join("docs/sub/b.md"), "# Title\n## Part two\n").unwrap();
    std::fs::write(
        dir.join("docs/a.md"),
        "[ok](sub/b.md#part-two) ![ok](../tests/golden/s.png) [ok](https://example.com)\n\
         [gone](sub/missing.md)\n![gone](../tests/golden/missing.png)\n[frag](sub/b.md#part-three)\n\
         ![stray](../elsewhere.png)\n[out](../../outside.md)\n",
    )
    .unwrap();
    let (problems, pages) = check_page(&dir, Path::new("docs/a.md"));
    std::fs::remove_dir_all(&dir).unwrap();
    let joined = problems.join("\n");
    assert_eq!(problems.len(), 5, "{joined}");
    for want in [
        "docs/a.md:2: (sub/missing.md) no such file",
        "docs/a.md:3: (../tests/golden/missing.png) no such file",
        "docs/a.md:4: (sub/b.md#part-three) docs/sub/b.md has no heading with the id #part-three",
        "docs/a.md:5: (../elsewhere.png) pictures are golden files",
        "docs/a.md:6: (../../outside.md) leaves the repository",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert_eq!(
        pages,
        vec![PathBuf::from("docs/sub/b.md"), PathBuf::from("docs/sub/b.md")]
    );
}
