//! Shell patterns (`*`, `?`, `[...]`) for the `#`, `%` and `/` modifiers of variable expansion.
//!
//! Matching is a dynamic programme over pattern tokens and text positions, so its cost is
//! bounded by the product of their lengths whatever the pattern (no backtracking blow-up).

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyChar,
    AnyString,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, ch: char) -> bool {
        match self {
            Token::Literal(l) => *l == ch,
            Token::AnyChar => true,
            Token::AnyString => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&ch)) != *negated
            }
        }
    }
}

/// A compiled shell pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    /// Compiles `pattern`, where `escape` makes the next character literal.
    pub(crate) fn new(pattern: &str, escape: char) -> Result<Pattern, String> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(ch) = chars.next() {
            let token = match ch {
                '*' => Token::AnyString,
                '?' => Token::AnyChar,
                '[' => {
                    let mut negated = false;
                    if matches!(chars.peek(), Some('!' | '^')) {
                        negated = true;
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(mut c) = chars.next() else {
                            return Err("unterminated character class".to_owned());
                        };
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        if c == escape {
                            c = chars.next().ok_or("unterminated character class")?;
                        }
                        let mut hi = c;
                        if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.next() {
                                Some(']') => {
                                    ranges.push((c, c));
                                    ranges.push(('-', '-'));
                                    break;
                                }
                                Some(h) => {
                                    hi = if h == escape {
                                        chars.next().ok_or("unterminated character class")?
                                    } else {
                                        h
                                    }
                                }
                                None => return Err("unterminated character class".to_owned()),
                            }
                            if hi < c {
                                return Err(format!("invalid range {c}-{hi}"));
                            }
                        }
                        ranges.push((c, hi));
                    }
                    Token::Class { negated, ranges }
                }
                c if c == escape => Token::Literal(chars.next().unwrap_or(escape)),
                c => Token::Literal(c),
            };
            tokens.push(token);
        }
        Ok(Pattern { tokens })
    }

    /// For each `i` in `0..=text.len()`, whether the pattern matches `text[..i]` entirely.
    fn prefix_matches(tokens: &[Token], text: &[char]) -> Vec<bool> {
        let mut row = vec![false; text.len() + 1];
        row[0] = true;
        for token in tokens {
            let mut next = vec![false; text.len() + 1];
            if *token == Token::AnyString {
                let mut reached = false;
                for i in 0..=text.len() {
                    reached |= row[i];
                    next[i] = reached;
                }
            } else {
                for i in 0..text.len() {
                    next[i + 1] = row[i] && token.matches(text[i]);
                }
            }
            row = next;
        }
        row
    }

    fn reversed(&self) -> Vec<Token> {
        self.tokens.iter().rev().cloned().collect()
    }

    /// Removes the shortest (or, `greedy`, the longest) prefix of `value` the pattern matches.
    pub(crate) fn trim_prefix(&self, value: &str, greedy: bool) -> String {
        let text: Vec<char> = value.chars().collect();
        let row = Self::prefix_matches(&self.tokens, &text);
        let cut = if greedy {
            row.iter().rposition(|m| *m)
        } else {
            row.iter().position(|m| *m)
        };
        match cut {
            Some(i) => text[i..].iter().collect(),
            None => value.to_owned(),
        }
    }

    /// Removes the shortest (or, `greedy`, the longest) suffix of `value` the pattern matches.
    pub(crate) fn trim_suffix(&self, value: &str, greedy: bool) -> String {
        let reversed: Vec<char> = value.chars().rev().collect();
        let row = Self::prefix_matches(&self.reversed(), &reversed);
        let cut = if greedy {
            row.iter().rposition(|m| *m)
        } else {
            row.iter().position(|m| *m)
        };
        match cut {
            Some(i) => reversed[i..].iter().rev().collect(),
            None => value.to_owned(),
        }
    }

    /// Replaces the first (or every) leftmost-longest match in `value` with `replacement`.
    pub(crate) fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let text: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut start = 0;
        let mut replaced = false;
        while start <= text.len() {
            if replaced && !all {
                out.extend(&text[start..]);
                return out;
            }
            let row = Self::prefix_matches(&self.tokens, &text[start..]);
            match row.iter().rposition(|m| *m) {
                Some(len) => {
                    out.push_str(replacement);
                    replaced = true;
                    if len == 0 {
                        // An empty match: keep the next character and move on.
                        if let Some(ch) = text.get(start) {
                            out.push(*ch);
                        }
                        start += 1;
                    } else {
                        start += len;
                    }
                }
                None => {
                    if let Some(ch) = text.get(start) {
                        out.push(*ch);
                    }
                    start += 1;
                }
            }
        }
        out
    }

    /// Whether the pattern matches all of `text`.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        Self::prefix_matches(&self.tokens, &text)
            .last()
            .copied()
            .unwrap_or(false)
    }
}

/// Whether `path` matches the `COPY`/`ADD` source `pattern` with Go's `filepath.Match` rules:
/// `*` and `?` never match `/`, `[...]` classes (`^` or `!` negates), `\\` escapes. The
/// pattern and the path must have the same number of `/`-separated components.
///
/// ```
/// use strata_dockerfile::match_path;
/// assert!(match_path("src/*.rs", "src/main.rs")?);
/// assert!(!match_path("src/*.rs", "src/bin/tool.rs")?);
/// assert!(match_path("[a-c]?.txt", "b1.txt")?);
/// # Ok::<(), String>(())
/// ```
pub fn match_path(pattern: &str, path: &str) -> Result<bool, String> {
    let patterns: Vec<&str> = pattern.split('/').collect();
    let names: Vec<&str> = path.split('/').collect();
    if patterns.len() != names.len() {
        // Still validate the pattern, as Go reports ErrBadPattern whatever the path.
        for part in &patterns {
            Pattern::new(part, '\\')?;
        }
        return Ok(false);
    }
    for (part, name) in patterns.iter().zip(&names) {
        if !Pattern::new(part, '\\')?.matches(name) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `text` has a character `match_path` gives a meaning to.
pub fn has_wildcards(text: &str) -> bool {
    text.contains(['*', '?', '[', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s, '\\').unwrap()
    }

    #[test]
    fn trims_shortest_and_longest() {
        assert_eq!(p("*.").trim_prefix("a.b.c", false), "b.c");
        assert_eq!(p("*.").trim_prefix("a.b.c", true), "c");
        assert_eq!(p(".*").trim_suffix("a.b.c", false), "a.b");
        assert_eq!(p(".*").trim_suffix("a.b.c", true), "a");
        assert_eq!(p("x").trim_prefix("abc", true), "abc");
    }

    #[test]
    fn replaces_first_and_all() {
        assert_eq!(p("o").replace("foo boo", "0", false), "f0o boo");
        assert_eq!(p("o").replace("foo boo", "0", true), "f00 b00");
        assert_eq!(p("b*o").replace("foo boo", "X", false), "foo X");
        assert_eq!(p("[fb]").replace("foo boo", "_", true), "_oo _oo");
    }

    #[test]
    fn classes_and_escapes() {
        assert!(p("[a-c]x").matches("bx"));
        assert!(!p("[!a-c]x").matches("bx"));
        assert!(p("\\*").matches("*"));
        assert!(!p("\\*").matches("a"));
        assert!(p("a?c").matches("abc"));
        assert!(Pattern::new("[abc", '\\').is_err());
    }
}
