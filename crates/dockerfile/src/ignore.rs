//! `.dockerignore`: which files of a build context the build never sees.
//!
//! Semantics of moby's pattern matcher, as BuildKit applies it: one pattern a line, `#` starts
//! a comment line, blank lines are skipped, each pattern is cleaned like a path (`./a/` is `a`,
//! a leading `/` is dropped), `*` matches within one path element, `?` one character other than
//! `/`, `[...]` a character class (`^` negates), `**` any number of elements (`**/` also none),
//! `\` escapes. A path is excluded when it or one of its parent directories matches; `!pattern`
//! re-includes, and the last pattern that matches decides.
//!
//! ```
//! use strata_dockerfile::Dockerignore;
//!
//! let ignore = Dockerignore::parse("# build output\ntarget\n**/*.log\n!keep.log\n")?;
//! assert!(ignore.is_excluded("target/debug/app"));
//! assert!(ignore.is_excluded("a/b/c.log"));
//! assert!(!ignore.is_excluded("keep.log"));
//! assert!(ignore.can_skip_dir("target"), "no exception can re-include anything below it");
//! # Ok::<(), strata_dockerfile::Error>(())
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: one character other than `/`.
    AnyChar,
    /// `*`: any run of characters other than `/`.
    AnyRun,
    /// `**` followed by more pattern: nothing, or anything ending in `/`.
    AnyDirs,
    /// `**` at the end: anything.
    AnyTail,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches_char(&self, ch: char) -> bool {
        match self {
            Token::Literal(l) => *l == ch,
            Token::AnyChar | Token::AnyRun => ch != '/',
            Token::AnyDirs | Token::AnyTail => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&ch)) != *negated
            }
        }
    }
}

/// One pattern of a `.dockerignore` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnorePattern {
    /// The pattern after cleaning, without its `!`.
    pub pattern: String,
    /// Whether it re-includes (`!pattern`).
    pub exclusion: bool,
    tokens: Vec<Token>,
}

impl IgnorePattern {
    /// The states reachable after reading `text`: `at[k]` is whether the first `k` tokens can
    /// match all of `text`; `inside[k]` whether an `**/` at `k` has consumed part of it and
    /// still waits for the `/` that ends it.
    fn states(&self, text: &[char]) -> (Vec<bool>, Vec<bool>) {
        let n = self.tokens.len();
        let mut at = vec![false; n + 1];
        let mut inside = vec![false; n];
        at[0] = true;
        close(&self.tokens, &mut at);
        for &ch in text {
            let mut next = vec![false; n + 1];
            let mut next_inside = vec![false; n];
            for (k, token) in self.tokens.iter().enumerate() {
                if matches!(token, Token::AnyDirs) {
                    if at[k] || inside[k] {
                        next_inside[k] = true;
                        if ch == '/' {
                            next[k + 1] = true;
                        }
                    }
                    continue;
                }
                if !at[k] || !token.matches_char(ch) {
                    continue;
                }
                next[k + 1] = true;
                // `*` and a final `**` may go on matching.
                if matches!(token, Token::AnyRun | Token::AnyTail) {
                    next[k] = true;
                }
            }
            close(&self.tokens, &mut next);
            at = next;
            inside = next_inside;
        }
        (at, inside)
    }

    /// Whether the pattern matches all of `path`.
    pub fn matches(&self, path: &str) -> bool {
        let chars: Vec<char> = path.chars().collect();
        self.states(&chars).0[self.tokens.len()]
    }

    /// Whether the pattern could match some path below directory `dir`.
    fn could_match_below(&self, dir: &str) -> bool {
        let mut prefix: Vec<char> = dir.chars().collect();
        prefix.push('/');
        let (at, inside) = self.states(&prefix);
        at.iter().chain(&inside).any(|s| *s)
    }
}

/// Follows tokens that can match the empty string.
fn close(tokens: &[Token], states: &mut [bool]) {
    for k in 0..tokens.len() {
        if states[k] && matches!(tokens[k], Token::AnyRun | Token::AnyDirs | Token::AnyTail) {
            states[k + 1] = true;
        }
    }
}

/// A compiled `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dockerignore {
    patterns: Vec<IgnorePattern>,
}

/// Cleans a slash-separated path as Go's `path.Clean` does (`a/./b/../c/` → `a/c`).
pub(crate) fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

fn compile(pattern: &str) -> std::result::Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() {
                    Token::AnyTail
                } else {
                    Token::AnyDirs
                });
            }
            '*' => tokens.push(Token::AnyRun),
            '?' => tokens.push(Token::AnyChar),
            '\\' => match chars.get(i) {
                Some(&next) => {
                    i += 1;
                    tokens.push(Token::Literal(next));
                }
                None => return Err("a trailing backslash escapes nothing".to_owned()),
            },
            '[' => {
                let mut negated = false;
                if chars.get(i) == Some(&'^') {
                    negated = true;
                    i += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err("unterminated character class".to_owned());
                    };
                    i += 1;
                    if c == ']' {
                        if ranges.is_empty() {
                            return Err("empty character class".to_owned());
                        }
                        break;
                    }
                    let lo = if c == '\\' {
                        let escaped = chars
                            .get(i)
                            .copied()
                            .ok_or("unterminated character class")?;
                        i += 1;
                        escaped
                    } else {
                        c
                    };
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                        i += 1;
                        let mut h = chars
                            .get(i)
                            .copied()
                            .ok_or("unterminated character class")?;
                        i += 1;
                        if h == '\\' {
                            h = chars
                                .get(i)
                                .copied()
                                .ok_or("unterminated character class")?;
                            i += 1;
                        }
                        if h < lo {
                            return Err(format!("invalid range {lo}-{h}"));
                        }
                        hi = h;
                    }
                    ranges.push((lo, hi));
                }
                tokens.push(Token::Class { negated, ranges });
            }
            ']' => return Err("unmatched ]".to_owned()),
            c => tokens.push(Token::Literal(c)),
        }
    }
    Ok(tokens)
}

impl Dockerignore {
    /// Reads the text of a `.dockerignore` file. Errors name the line of the bad pattern.
    pub fn parse(text: &str) -> Result<Dockerignore> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            if let Some(pattern) = Self::pattern(line).map_err(|message| Error::Ignore {
                line: index + 1,
                message,
            })? {
                patterns.push(pattern);
            }
        }
        Ok(Dockerignore { patterns })
    }

    /// Compiles patterns given one by one (as `--ignore-path` or an API user would), with the
    /// same cleaning as lines of a file; errors name the 1-based position of the bad pattern.
    pub fn from_patterns<I, S>(patterns: I) -> Result<Dockerignore>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut compiled = Vec::new();
        for (index, pattern) in patterns.into_iter().enumerate() {
            if let Some(p) = Self::pattern(pattern.as_ref()).map_err(|message| Error::Ignore {
                line: index + 1,
                message,
            })? {
                compiled.push(p);
            }
        }
        Ok(Dockerignore { patterns: compiled })
    }

    fn pattern(line: &str) -> std::result::Result<Option<IgnorePattern>, String> {
        let mut pattern = line.trim();
        if pattern.is_empty() {
            return Ok(None);
        }
        let exclusion = pattern.starts_with('!');
        if exclusion {
            pattern = pattern[1..].trim();
            if pattern.is_empty() {
                return Err("illegal exclusion pattern: \"!\"".to_owned());
            }
        }
        let mut cleaned = clean_path(pattern);
        if cleaned.len() > 1 && cleaned.starts_with('/') {
            cleaned.remove(0);
        }
        let tokens = compile(&cleaned).map_err(|e| format!("bad pattern `{line}`: {e}"))?;
        Ok(Some(IgnorePattern {
            pattern: cleaned,
            exclusion,
            tokens,
        }))
    }

    /// The patterns in order.
    pub fn patterns(&self) -> &[IgnorePattern] {
        &self.patterns
    }

    /// Whether any pattern re-includes (`!`).
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out of the build.
    pub fn is_excluded(&self, path: &str) -> bool {
        let path = clean_path(path.trim_start_matches('/'));
        // The context's root is never excluded: only what is below it.
        if path == "." {
            return false;
        }
        let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // An inclusion cannot change an excluded path, nor an exclusion an included one.
            if pattern.exclusion != excluded {
                continue;
            }
            if pattern.matches(&path) || parents.iter().any(|parent| pattern.matches(parent)) {
                excluded = !pattern.exclusion;
            }
        }
        excluded
    }

    /// Whether directory `dir` is excluded and no `!` pattern could re-include anything below
    /// it, so that a walk may skip it whole.
    pub fn can_skip_dir(&self, dir: &str) -> bool {
        if !self.is_excluded(dir) {
            return false;
        }
        let dir = clean_path(dir.trim_start_matches('/'));
        !self
            .patterns
            .iter()
            .any(|p| p.exclusion && p.could_match_below(&dir))
    }
}

/// The ignore file that applies to a build: `<Dockerfile name>.dockerignore` beside the
/// Dockerfile when it exists, else `.dockerignore` at the root of the context, else `None`.
pub fn ignore_file_for(context: &Path, dockerfile: &Path) -> Option<PathBuf> {
    if let Some(name) = dockerfile.file_name() {
        let mut specific = name.to_os_string();
        specific.push(".dockerignore");
        let candidate = dockerfile.with_file_name(specific);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let default = context.join(".dockerignore");
    default.is_file().then_some(default)
}

#[cfg(test)]
mod tests {
    use super::clean_path;

    #[test]
    fn cleans_like_go() {
        assert_eq!(clean_path("./a//b/./c/"), "a/b/c");
        assert_eq!(clean_path("a/../../b"), "../b");
        assert_eq!(clean_path("/../a"), "/a");
        assert_eq!(clean_path(""), ".");
        assert_eq!(clean_path("a/.."), ".");
    }
}
